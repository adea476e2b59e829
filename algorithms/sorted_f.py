"""Sorted-F (Wang, Ye, Zhou) and our continuous variant Sorted-F-C (docs/algorithms.md).

Both pick groups X of waiting requests minimising F(X) = sum(o) / |X|^2 under the additive
knapsack capacity sum(s + o) <= M, with o the planning length (`hi`; exact lengths
give the paper's clairvoyant setting). `sorted-f` runs groups synchronously: the next group is
chosen from the requests waiting then, and starts only once the whole current group has
finished. `sorted-f-c` keeps the groups only as a priority order and refills memory every
iteration with the future-memory check, stopping at the first failure. Group selection is the
exact DP for small backlogs and greedy + local search above `exact_max_items` (see `_groups`).
"""

from __future__ import annotations

from collections import deque
from typing import Any, ClassVar

import numpy as np

from algorithms._admission import admit_with_future_check
from algorithms._groups import plan_groups, select_group
from algorithms.memory import FutureMemory
from algorithms.state import SchedulerState, arrival_key
from algorithms.types import BatchDecision, RequestId, WaitingRequest


class SortedFBatchFormer:
    """Group-synchronous Sorted-F: start the min-F feasible group when the last one is done."""

    name: ClassVar[str] = "sorted-f"
    can_evict: ClassVar[bool] = False
    clairvoyant: ClassVar[bool] = False

    def __init__(self, *, exact_max_items: int = 64) -> None:
        self.exact_max_items = exact_max_items

    def waiting_key(self, request: WaitingRequest) -> Any:
        return arrival_key(request)

    def planning_length(self, request: WaitingRequest) -> int:
        return request.interval.hi

    def form_batch(self, state: SchedulerState) -> BatchDecision:
        if len(state.running) or not len(state.waiting):
            return BatchDecision.empty()
        waiting = list(state.waiting)
        prompts = np.array([r.prompt_tokens for r in waiting], dtype=np.int64)
        outputs = np.array([r.interval.hi for r in waiting], dtype=np.int64)
        chosen = select_group(
            prompts, outputs, state.kv_capacity_tokens, exact_max_items=self.exact_max_items
        )
        group = sorted((waiting[i] for i in chosen), key=lambda r: (r.interval.hi, r.id))
        return BatchDecision(admit=tuple(r.id for r in group[: state.batch_room()]))


class SortedFContinuousBatchFormer(SortedFBatchFormer):
    """Sorted-F order (group index, then planning length), continuous future-memory admission.

    Carries the group order across iterations: re-planning every waiting request at every
    arrival costs a full group selection per arrival. Requests that arrived since the last plan
    (the back of the arrival-ordered queue) are appended to the order as one more group, sorted
    by planning length; the whole queue is re-planned once they reach `replan_fraction` of the
    requests planned last time, or the plan runs out. `reset()` forgets the plan.
    """

    name: ClassVar[str] = "sorted-f-c"

    def __init__(self, *, exact_max_items: int = 64, replan_fraction: float = 0.25) -> None:
        super().__init__(exact_max_items=exact_max_items)
        self.replan_fraction = replan_fraction
        self._order: deque[RequestId] = deque()
        self._expected_waiting = 0  # waiting count if no request arrived since the last plan
        self._known: set[RequestId] = set()  # every id placed in the order since the last plan
        self._planned = 0
        self._appended = 0

    def reset(self) -> None:
        self._order.clear()
        self._known.clear()
        self._expected_waiting = self._planned = self._appended = 0

    def form_batch(self, state: SchedulerState) -> BatchDecision:
        if not len(state.waiting):
            return BatchDecision.empty()
        arrived = len(state.waiting) - self._expected_waiting
        if arrived > 0:
            late = [r for r in state.waiting.last(arrived) if r.id not in self._known]
            self._appended += arrived
            too_many = self._appended > self.replan_fraction * self._planned
            # fewer unseen than arrived: a request came back (e.g. a forced eviction): replan
            if len(late) != arrived or too_many or not self._order:
                self._replan(state)
            else:
                late.sort(key=lambda r: (r.interval.hi, r.id))
                self._order.extend(r.id for r in late)
                self._known.update(r.id for r in late)
        while self._order and self._order[0] not in state.waiting:
            self._order.popleft()
        memory = FutureMemory.for_running(state.running, state.running.hi, state.kv_capacity_tokens)
        candidates = (state.waiting.get(i) for i in self._order if i in state.waiting)
        admitted = admit_with_future_check(
            candidates, self.planning_length, memory, state.batch_room()
        )
        self._expected_waiting = len(state.waiting) - len(admitted)
        return BatchDecision(admit=tuple(admitted))

    def _replan(self, state: SchedulerState) -> None:
        waiting = list(state.waiting)
        prompts = np.array([r.prompt_tokens for r in waiting], dtype=np.int64)
        outputs = np.array([r.interval.hi for r in waiting], dtype=np.int64)
        groups, unfit = plan_groups(
            prompts, outputs, state.kv_capacity_tokens, exact_max_items=self.exact_max_items
        )
        order: list[RequestId] = []
        for group in [*groups, np.asarray(unfit, dtype=np.int64)]:
            members = sorted((waiting[i] for i in group), key=lambda r: (r.interval.hi, r.id))
            order.extend(r.id for r in members)
        self._order = deque(order)
        self._planned = len(waiting)
        self._appended = 0
        self._known = {r.id for r in waiting}
