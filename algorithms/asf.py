"""Adaptive shortest-first (`asf`): expected-remaining order with aging, an adaptive KV
reservation, and cheap, limited evictions. Built for wide learned intervals under resume
preemption, where vLLM's admit-while-the-prompt-fits thrashes the KV cache.

Each iteration: (1) if the running requests' next tokens overflow M, evict victims in the
order of `victims.py` until they fit; (2) update the reservation ratio (`reservation.py`) from
whether this iteration overflowed; (3) walk the waiting queue, ordered by expected remaining
tokens + `wait_weight` x arrival (`remaining.py`, `aging.py`), admitting while the
future-memory check passes with every request planned at ratio x its expected remaining
length; stop at the first failure. The ratio is the one piece of state carried across
iterations: a deterministic function of the iterations seen, updated once per `state.step`
(`reset()` forgets it). See docs/algorithms.md, "Adaptive shortest-first".
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from algorithms._admission import admit_with_future_check
from algorithms.aging import AgedKey, aged_key, check_wait_weight
from algorithms.memory import FutureMemory
from algorithms.remaining import (
    check_distribution,
    expected_remaining,
    waiting_expected_remaining,
)
from algorithms.reservation import AdaptiveReservation
from algorithms.state import SchedulerState
from algorithms.types import BatchDecision, WaitingRequest
from algorithms.victims import check_share, choose_victims


class ASFBatchFormer:
    """Shortest expected remaining first with aging, adaptive reservation, limited eviction."""

    name: ClassVar[str] = "asf"
    can_evict: ClassVar[bool] = True
    clairvoyant: ClassVar[bool] = False

    def __init__(
        self,
        *,
        distribution: str = "uniform",
        wait_weight: float = 10.0,
        protect_share: float = 0.5,
        ratio_initial: float = 0.2,
        ratio_min: float = 0.1,
        ratio_max: float = 1.0,
        tighten_step: float = 0.002,
        relax_step: float = 0.0001,
    ) -> None:
        """`distribution`: how L spreads over the interval (`uniform` or `loguniform`).
        `wait_weight`: tokens of priority per second waited (0 = no aging). `protect_share`:
        a request past this share of its predicted length is evicted last (1 = no protection).
        `ratio_*`, `tighten_step`, `relax_step`: the reservation ratio's start, range and
        steps per overflowing / calm iteration."""
        self.distribution = check_distribution(distribution)
        self.wait_weight = check_wait_weight(wait_weight)
        self.protect_share = check_share(protect_share)
        self.reservation = AdaptiveReservation(
            initial=ratio_initial,
            minimum=ratio_min,
            maximum=ratio_max,
            tighten_step=tighten_step,
            relax_step=relax_step,
        )

    def reset(self) -> None:
        """Forget the reservation ratio learned so far."""
        self.reservation.reset()

    def waiting_key(self, request: WaitingRequest) -> AgedKey:
        remaining = waiting_expected_remaining(request, self.distribution)
        return aged_key(request, remaining, self.wait_weight)

    def planning_length(self, request: WaitingRequest) -> int:
        """Requests that cannot fit with their upper bound are rejected, as under `vllm`."""
        return request.interval.hi

    def planned_steps(self, request: WaitingRequest) -> int:
        """Iterations a waiting request is planned to run: ratio x expected remaining."""
        remaining = waiting_expected_remaining(request, self.distribution)
        return self.reservation.planned_remaining_one(remaining, request.interval.hi)

    def form_batch(self, state: SchedulerState) -> BatchDecision:
        running, capacity = state.running, state.kv_capacity_tokens
        kept = running.resumed
        remaining = expected_remaining(
            running.lo + kept, running.hi + kept, running.generated + kept, self.distribution
        )
        overflowed = running.next_step_tokens() > capacity
        self.reservation.observe(state.step, overflowed)
        victims = choose_victims(running, remaining, capacity, self.protect_share)
        evict = tuple(int(i) for i in running.ids[victims])
        room = state.batch_room() + len(victims)
        if not len(state.waiting) or room <= 0:
            return BatchDecision(evict=evict)
        keep = np.ones(len(running), dtype=bool)
        keep[victims] = False
        generated = running.generated[keep]
        steps = self.reservation.planned_remaining(remaining[keep], running.hi[keep] - generated)
        memory = FutureMemory(running.prompt_tokens[keep] + generated + 1, steps, capacity)
        admitted = admit_with_future_check(state.waiting, self.planned_steps, memory, room)
        return BatchDecision(admit=tuple(admitted), evict=evict)
