"""FCFS with the future-memory check: the papers' "MC-Benchmark" (docs/algorithms.md, "Baselines").

Arrival order; each waiting request is admitted only if the projected memory of the future-memory
check stays within M for every future iteration when everyone runs for their planning length (the
interval's upper bound); stop at the first failure (or skip it, as an option). Never evicts.
"""

from __future__ import annotations

from typing import Any, ClassVar

from algorithms._admission import check_fraction, future_check_decision
from algorithms.state import SchedulerState, arrival_key
from algorithms.types import BatchDecision, WaitingRequest


class FCFSBatchFormer:
    """Arrival order + future-memory check, planning with `hi`."""

    name: ClassVar[str] = "fcfs"
    can_evict: ClassVar[bool] = False
    clairvoyant: ClassVar[bool] = False

    def __init__(self, *, skip_on_failure: bool = False, reserve_fraction: float = 0.0) -> None:
        self.skip_on_failure = skip_on_failure
        self.reserve_fraction = check_fraction("reserve_fraction", reserve_fraction)

    def waiting_key(self, request: WaitingRequest) -> Any:
        return arrival_key(request)

    def planning_length(self, request: WaitingRequest) -> int:
        return request.interval.hi

    def form_batch(self, state: SchedulerState) -> BatchDecision:
        return future_check_decision(
            state,
            self.planning_length,
            state.running.hi,
            skip_on_failure=self.skip_on_failure,
            reserve_fraction=self.reserve_fraction,
        )
