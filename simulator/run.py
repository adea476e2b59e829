"""Trace-driven simulation: replay a workload through one batch former on a cost model.

Discrete-event, iteration by iteration: arrivals up to the clock join the waiting queue, the
`SchedulingLoop` (the same one the service runs) forms and executes one batch, and the clock
advances by the cost model's iteration time; an idle worker jumps to the next arrival.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from algorithms import (
    CLAIRVOYANT,
    LengthInterval,
    RequestRejectedError,
    SchedulingLoop,
    WaitingRequest,
    make_batch_former,
)
from algorithms.protocols import IntervalRefiner
from predictors.online import OnlineCalibrator, OnlineIntervals
from simulator.cost_model import CostModel
from simulator.executor import SimulatedExecutor
from simulator.metrics import RequestLog, summarize

IntArray = NDArray[np.int64]
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests to replay; request i has id i. `lo`/`hi` are what the policies may see.

    With `online`, request i's interval is instead computed when it arrives, by a calibrator
    (fresh for every run) that each finished request has updated (`--intervals model=...,online`).
    """

    arrival_s: NDArray[np.float64]
    prompt_tokens: IntArray
    output_tokens: IntArray
    lo: IntArray
    hi: IntArray
    online: OnlineIntervals | None = None

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        columns = (self.prompt_tokens, self.output_tokens, self.lo, self.hi)
        if any(len(c) != n for c in columns):
            raise ValueError("workload columns must have equal length")
        if n and (self.lo.min() < 1 or np.any(self.lo > self.hi)):
            raise ValueError("workload intervals need 1 <= lo <= hi")
        if n and (self.output_tokens.min() < 1 or self.prompt_tokens.min() < 1):
            raise ValueError("workload lengths must be >= 1")

    def __len__(self) -> int:
        return len(self.arrival_s)

    def request(self, i: int) -> WaitingRequest:
        interval = LengthInterval(int(self.lo[i]), int(self.hi[i]))
        return WaitingRequest(i, float(self.arrival_s[i]), int(self.prompt_tokens[i]), interval)


@dataclass(frozen=True, slots=True)
class SimResult:
    """One policy's run: the summary of issue #2 and the per-request log."""

    policy: str
    summary: dict[str, Any]
    log: RequestLog
    online_intervals: tuple[IntArray, IntArray] | None = None  # given at arrival, with online


def simulate(
    workload: Workload,
    policy: str,
    cost_model: CostModel,
    *,
    params: dict[str, Any] | None = None,
    max_batch_size: int | None = None,
    max_num_batched_tokens: int | None = None,
    refiner: IntervalRefiner | None = None,
    preemption: str = "resume",
    progress: Progress | None = None,
) -> SimResult:
    """Replay `workload` through the batch former `policy`; deterministic for given inputs.

    `max_batch_size` caps running requests; `max_num_batched_tokens` turns on chunked prefill
    with that token budget per iteration; `refiner` tightens running requests' intervals;
    `preemption` is what an evicted request keeps, "resume" (vLLM) or "restart" (the papers)
    (see `SchedulingLoop`).
    """
    params = dict(params or {})
    if policy in CLAIRVOYANT:
        params.setdefault("true_lengths", workload.output_tokens)
    former = make_batch_former(policy, **params)
    executor = SimulatedExecutor(workload.output_tokens, cost_model)
    capacity = cost_model.kv_capacity_tokens
    loop = SchedulingLoop(
        former,
        executor,
        capacity,
        max_batch_size=max_batch_size,
        max_num_batched_tokens=max_num_batched_tokens,
        refiner=refiner,
        preemption=preemption,
    )
    log = RequestLog(workload.arrival_s.astype(np.float64), workload.output_tokens)
    online = _Online(workload) if workload.online is not None else None
    started = time.perf_counter()
    _run(loop, workload, log, progress or (lambda _: None), online)
    wall_s = time.perf_counter() - started
    summary = summarize(log, capacity, wall_s)
    if online is None:
        return SimResult(policy, summary, log)
    summary["online_calibration"] = online.summary()
    return SimResult(policy, summary, log, (online.given_lo, online.given_hi))


class _Online:
    """One run's online recalibration: intervals at arrival, updates at completion."""

    def __init__(self, workload: Workload) -> None:
        assert workload.online is not None
        self.intervals = workload.online
        self.calibrator: OnlineCalibrator = workload.online.calibrator()
        self.output_tokens = workload.output_tokens
        self.issued: dict[int, tuple[int, int]] = {}
        self.covered = 0
        self.given_lo = workload.lo.copy()
        self.given_hi = workload.hi.copy()

    def request(self, workload: Workload, i: int) -> WaitingRequest:
        lo, hi = self.issued[i] = self.intervals.interval(self.calibrator, i)
        self.given_lo[i], self.given_hi[i] = lo, hi
        return WaitingRequest(
            i, float(workload.arrival_s[i]), int(workload.prompt_tokens[i]), LengthInterval(lo, hi)
        )

    def finished(self, ids: tuple[int, ...]) -> None:
        for i in ids:
            lo, hi = self.issued.pop(int(i))
            y = int(self.output_tokens[i])  # simulated requests run to their true length
            self.covered += lo <= y <= hi
            self.calibrator.observe(lo, hi, y, censored=False)

    def summary(self) -> dict[str, Any]:
        n = self.calibrator.num_observed
        state = self.calibrator.summary()
        return {
            "observed": n,
            "coverage": self.covered / n if n else None,
            "miss_below_lo": state["misses_below_lo"] / n if n else None,
            "miss_above_hi": state["misses_above_hi"] / n if n else None,
            "delta_lo": state["delta_lo"],
            "delta_hi": state["delta_hi"],
        }


def _run(
    loop: SchedulingLoop,
    workload: Workload,
    log: RequestLog,
    progress: Progress,
    online: _Online | None = None,
) -> None:
    order = np.argsort(workload.arrival_s, kind="stable")
    arrivals = workload.arrival_s[order]
    now = 0.0
    upcoming = 0
    while upcoming < len(order) or loop.has_work:
        while upcoming < len(order) and arrivals[upcoming] <= now:
            i = int(order[upcoming])
            try:
                loop.add_request(
                    workload.request(i) if online is None else online.request(workload, i)
                )
            except RequestRejectedError:
                log.rejected[order[upcoming]] = True
                if online is not None:
                    online.issued.pop(i, None)
                progress(1)
            upcoming += 1
        if not loop.has_work:
            if upcoming < len(order):
                now = max(now, float(arrivals[upcoming]))
            continue
        outcome = loop.step(now)
        log.record(now, outcome)
        if online is not None:
            online.finished(outcome.finished)
            for i in outcome.rejected:
                online.issued.pop(int(i), None)
        if outcome.finished or outcome.rejected:
            progress(len(outcome.finished) + len(outcome.rejected))
        if not outcome.batch_size and not outcome.evicted:
            now = _idle_until(loop, arrivals, upcoming, now)
        else:
            now += outcome.elapsed_s


def _idle_until(
    loop: SchedulingLoop, arrivals: NDArray[np.float64], upcoming: int, now: float
) -> float:
    """Nothing ran: wait for the next arrival, or fail loudly if none will ever come."""
    if upcoming < len(arrivals):
        return max(now, float(arrivals[upcoming]))
    raise RuntimeError(
        f"policy {loop.former.name} admitted nothing with {len(loop.waiting)} requests "
        "waiting, nothing running and no arrivals left"
    )
