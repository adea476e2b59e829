"""MC-SF, Memory-Constrained Shortest-First (Jaillet et al.; docs/algorithms.md).

Waiting requests in ascending predicted length (ties: arrival, prompt, id), admitted while the
future-memory check (docs/algorithms.md) passes with every request planned at its upper bound `hi`;
stop at the first failure. Never evicts. With exact lengths (lo = hi = o) this is H-SF.
"""

from __future__ import annotations

from typing import Any, ClassVar

from algorithms.fcfs import FCFSBatchFormer
from algorithms.types import WaitingRequest


class MCSFBatchFormer(FCFSBatchFormer):
    """Shortest planning length first + future-memory check (the FCFS twin, reordered)."""

    name: ClassVar[str] = "mcsf"

    def waiting_key(self, request: WaitingRequest) -> Any:
        return (request.interval.hi, request.arrival_s, request.prompt_tokens, request.id)
