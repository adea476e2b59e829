"""A_min, the adaptive optimistic algorithm of Chen et al. (docs/algorithms.md, "A_min details").

Plans with lower bounds and learns while running: a running request's bound rises to the tokens
it has produced (refine). If the running requests' next tokens overflow M, evict in ascending
current bound (ties: fewer tokens, later start, smaller id) until they fit; an evicted request
restarts later with its bound raised to what it produced (`g`, or `g + 1` as an option).
Then admit waiting requests in ascending bound while the future-memory check passes, planning
waiting requests at their bound and running ones at max(bound, g + 1); stop at the first failure.
"""

from __future__ import annotations

import heapq
from typing import Any, ClassVar

import numpy as np

from algorithms._admission import admit_with_future_check
from algorithms.memory import FutureMemory, IntArray
from algorithms.state import RunningSet, SchedulerState
from algorithms.types import BatchDecision, WaitingRequest

BOUND_RULES = ("g", "g+1")


class AMinBatchFormer:
    """Ascending lower bound, refine while running, evict smallest bound first on overflow."""

    name: ClassVar[str] = "amin"
    can_evict: ClassVar[bool] = True
    clairvoyant: ClassVar[bool] = False

    def __init__(self, *, bound_after_eviction: str = "g", skip_on_failure: bool = False) -> None:
        if bound_after_eviction not in BOUND_RULES:
            raise ValueError(f"bound_after_eviction must be one of {BOUND_RULES}")
        self.eviction_bonus = 1 if bound_after_eviction == "g+1" else 0
        self.skip_on_failure = skip_on_failure

    def planning_length(self, request: WaitingRequest) -> int:
        """The current lower bound: lo, raised by what earlier runs produced."""
        learned = request.max_generated + self.eviction_bonus if request.max_generated else 0
        return max(request.interval.lo, learned)

    def waiting_key(self, request: WaitingRequest) -> Any:
        return (self.planning_length(request), request.arrival_s, request.id)

    def running_bounds(self, running: RunningSet) -> IntArray:
        learned = np.where(
            running.max_generated > 0, running.max_generated + self.eviction_bonus, 0
        )
        return np.maximum(np.maximum(running.lo, learned), running.generated)

    def form_batch(self, state: SchedulerState) -> BatchDecision:
        running = state.running
        bounds = self.running_bounds(running)
        keep, evicted = self._resolve_overflow(running, bounds, state.kv_capacity_tokens)
        evict = tuple(r.id for r in evicted)
        if not len(state.waiting) and not evicted:
            return BatchDecision.empty()
        full = state.max_batch_size is not None and len(running) >= state.max_batch_size
        if full and not evicted:  # no room to admit: skip the memory projection
            return BatchDecision.empty()
        generated = running.generated[keep]
        memory = FutureMemory(
            running.prompt_tokens[keep] + generated + 1,
            np.maximum(bounds[keep], generated + 1) - generated,
            state.kv_capacity_tokens,
        )
        evicted.sort(key=self.waiting_key)
        candidates = heapq.merge(state.waiting, evicted, key=self.waiting_key)
        room = len(state.waiting) + len(evicted)
        if state.max_batch_size is not None:
            room = state.max_batch_size - int(keep.sum())
        admitted = admit_with_future_check(
            candidates, self.planning_length, memory, room, skip_on_failure=self.skip_on_failure
        )
        return BatchDecision(admit=tuple(admitted), evict=evict)

    def _resolve_overflow(
        self, running: RunningSet, bounds: IntArray, capacity: int
    ) -> tuple[np.ndarray, list[WaitingRequest]]:
        """Evict smallest bound first until the next iteration fits; return (keep mask, evicted)."""
        keep = np.ones(len(running), dtype=bool)
        overflow = running.next_step_tokens() - capacity
        if overflow <= 0:
            return keep, []
        tokens = running.prompt_tokens + running.generated + 1
        order = np.lexsort((running.ids, -running.start_step, running.generated, bounds))
        evicted: list[WaitingRequest] = []
        for j in order:
            if overflow <= 0:
                break
            keep[j] = False
            overflow -= int(tokens[j])
            evicted.append(running.evicted_record(int(j)))
        return keep, evicted
