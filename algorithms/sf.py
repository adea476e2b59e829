"""Shortest-first with vLLM's admission rule: what an SJF patch to vLLM does (docs/algorithms.md).

Waiting requests in ascending planning length (`hi`), admitted while the prompt fits in the
memory free now, preempting the most recently admitted request on overflow, exactly as `vllm`.
Only the order differs, which is what separates "order" from "admission" in our comparisons.
"""

from __future__ import annotations

from typing import Any, ClassVar

from algorithms.types import WaitingRequest
from algorithms.vllm import VLLMBatchFormer


class SFBatchFormer(VLLMBatchFormer):
    """Shortest planning length first, vLLM admission and preemption."""

    name: ClassVar[str] = "sf"

    def waiting_key(self, request: WaitingRequest) -> Any:
        return (request.interval.hi, request.arrival_s, request.prompt_tokens, request.id)
