"""H-SF, the hindsight shortest-first benchmark of Chen et al. (docs/algorithms.md).

Knows every true output length: admits in ascending true length while the future-memory check passes
with exact lengths, stopping at the first failure. It never overflows and never evicts. It is
a simulator-only yardstick: construct it with the true lengths or it refuses to run.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike

from algorithms._admission import future_check_decision
from algorithms.state import SchedulerState
from algorithms.types import BatchDecision, WaitingRequest


class HSFBatchFormer:
    """Shortest true length first + future-memory check with true lengths."""

    name: ClassVar[str] = "hsf"
    can_evict: ClassVar[bool] = False
    clairvoyant: ClassVar[bool] = True  # constructed with the true output lengths

    def __init__(self, *, true_lengths: ArrayLike | None = None) -> None:
        if true_lengths is None:
            raise ValueError(
                "hsf needs the true output lengths (true_lengths indexed by request id); "
                "it is a hindsight benchmark for the simulator only"
            )
        self.true_lengths = np.asarray(true_lengths, dtype=np.int64)

    def waiting_key(self, request: WaitingRequest) -> Any:
        return (self.planning_length(request), request.arrival_s, request.prompt_tokens, request.id)

    def planning_length(self, request: WaitingRequest) -> int:
        return int(self.true_lengths[request.id])

    def form_batch(self, state: SchedulerState) -> BatchDecision:
        running_lengths = self.true_lengths[state.running.ids]
        return future_check_decision(state, self.planning_length, running_lengths)
