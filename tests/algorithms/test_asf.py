"""The adaptive shortest-first policy (`asf`) end to end, under resume preemption."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from algorithms import SchedulingLoop, WaitingRequest, make_batch_former
from algorithms.asf import ASFBatchFormer
from algorithms.loop import StepOutcome
from algorithms.state import RunningSet, SchedulerState, WaitingQueue
from algorithms.types import LengthInterval
from tests.algorithms.fake_executor import FakeExecutor
from tests.jobs import Jobs
from tests.strategies import jobs

IntArray = NDArray[np.int64]

# optimistic enough that small instances overflow and evict often
EAGER = {"ratio_initial": 0.1, "ratio_min": 0.1, "ratio_max": 1.0, "tighten_step": 0.05}
SETTINGS = [{}, EAGER, {**EAGER, "distribution": "loguniform", "protect_share": 1.0}]


class SurvivorRefiner:
    """lo <- max(lo, g + 1); hi <- max(hi, 2g), capped: a calibrated ladder, roughly."""

    def refine(
        self, lo: IntArray, hi: IntArray, generated: IntArray, max_tokens: IntArray
    ) -> tuple[IntArray, IntArray]:
        new_lo = np.maximum(lo, generated + 1)
        new_hi = np.minimum(np.maximum(np.maximum(hi, 2 * generated), new_lo), max_tokens)
        return np.minimum(new_lo, new_hi), new_hi


def run(
    workload: Jobs,
    capacity: int,
    params: dict[str, Any],
    *,
    refine: bool = False,
    max_batch_size: int | None = None,
) -> tuple[FakeExecutor, list[StepOutcome], list[float]]:
    """Arrivals on the iteration clock; returns the executor, every outcome and every ratio."""
    former = make_batch_former("asf", **params)
    assert isinstance(former, ASFBatchFormer)
    executor = FakeExecutor(workload.output_tokens)
    loop = SchedulingLoop(
        former,
        executor,
        capacity,
        refiner=SurvivorRefiner() if refine else None,
        max_batch_size=max_batch_size,
    )
    order = np.argsort(workload.arrival_s, kind="stable")
    outcomes: list[StepOutcome] = []
    ratios: list[float] = []
    upcoming, now = 0, 0.0
    while upcoming < len(order) or loop.has_work:
        while upcoming < len(order) and workload.arrival_s[order[upcoming]] <= now:
            loop.add_request(workload.request(int(order[upcoming])))
            upcoming += 1
        if loop.has_work:
            outcomes.append(loop.step(now))
            ratios.append(former.reservation.ratio)
        now += 1.0
        assert len(outcomes) < 20_000, "no progress"
    return executor, outcomes, ratios


@pytest.mark.parametrize("params", SETTINGS)
@settings(max_examples=40, deadline=None)
@given(instance=jobs(within_interval=False), refine=st.booleans())
def test_memory_never_exceeds_capacity_and_each_token_is_emitted_once(
    params: dict[str, Any], instance: tuple[Jobs, int], refine: bool
) -> None:
    workload, capacity = instance
    executor, outcomes, _ = run(workload, capacity, params, refine=refine)
    assert all(o.kv_tokens <= capacity for o in outcomes)
    finished = [i for o in outcomes for i in o.finished]
    rejected = {i for o in outcomes for i in o.rejected}
    assert len(finished) == len(set(finished))
    assert len(finished) + len(rejected) == len(workload)
    for request_id in finished:
        # resumed where it stopped: every output index once, in order
        length = int(workload.output_tokens[request_id])
        assert executor.positions[request_id] == list(range(length))


@settings(max_examples=30, deadline=None)
@given(instance=jobs(within_interval=False), size=st.integers(1, 3))
def test_batch_size_cap_holds_through_evictions(instance: tuple[Jobs, int], size: int) -> None:
    workload, capacity = instance
    _, outcomes, _ = run(workload, capacity, EAGER, max_batch_size=size)
    assert all(o.batch_size <= size and o.kv_tokens <= capacity for o in outcomes)


@settings(max_examples=30, deadline=None)
@given(instance=jobs(within_interval=False), refine=st.booleans())
def test_same_inputs_same_outcomes(instance: tuple[Jobs, int], refine: bool) -> None:
    workload, capacity = instance
    _, first, first_ratios = run(workload, capacity, EAGER, refine=refine)
    _, second, second_ratios = run(workload, capacity, EAGER, refine=refine)
    assert first == second
    assert first_ratios == second_ratios


def state_with(
    running_rows: list[tuple[int, int, int, int]],
    waiting: list[WaitingRequest],
    capacity: int,
    former: ASFBatchFormer,
    step: int = 0,
) -> SchedulerState:
    """Running rows are (prompt, lo, hi, generated), ids 100, 101, ..."""
    running = RunningSet()
    for j, (prompt, lo, hi, _) in enumerate(running_rows):
        request = WaitingRequest(100 + j, 0.0, prompt, LengthInterval(lo, hi))
        running.admit([request], 0, capacity)
    running.generated = np.asarray([r[3] for r in running_rows], dtype=np.int64)
    running.prefill_left[:] = 0
    running.kv_tokens = int((running.prompt_tokens + running.generated).sum())
    queue = WaitingQueue(key=former.waiting_key)
    for request in waiting:
        queue.add(request)
    return SchedulerState(step, 0.0, queue, running, capacity)


def test_overflow_evicts_until_the_batch_fits_and_tightens_the_ratio() -> None:
    former = ASFBatchFormer(ratio_initial=0.5, ratio_min=0.1, tighten_step=0.1)
    rows = [(5, 10, 100, 40), (5, 10, 100, 2), (5, 10, 100, 30)]
    held = sum(p + g + 1 for p, _, _, g in rows)
    state = state_with(rows, [], held - 3, former)
    decision = former.form_batch(state)
    assert decision.evict == (101,)  # the youngest: 8 tokens to recompute
    assert former.reservation.ratio == pytest.approx(0.6)
    calm = state_with(rows, [], held + 100, former, step=1)
    assert former.form_batch(calm).evict == ()
    assert former.reservation.ratio == pytest.approx(0.6 - former.reservation.relax_step)


def test_admission_walks_the_aged_order_and_stops_at_the_first_misfit() -> None:
    former = ASFBatchFormer(ratio_initial=1.0, ratio_min=1.0, ratio_max=1.0, wait_weight=0.0)
    short = WaitingRequest(1, 5.0, 4, LengthInterval(2, 4))  # expected 3
    long = WaitingRequest(2, 0.0, 4, LengthInterval(40, 60))  # expected 50
    tiny = WaitingRequest(3, 9.0, 1, LengthInterval(1, 1))
    state = state_with([], [short, long, tiny], 40, former)
    assert [r.id for r in state.waiting] == [3, 1, 2]
    # 3 and 1 fit; 2 would peak at 4 + 50 > 40 and nothing behind it is tried
    assert former.form_batch(state).admit == (3, 1)
    # with aging the long early request moves ahead of both and blocks them
    aged = ASFBatchFormer(ratio_initial=1.0, ratio_min=1.0, ratio_max=1.0, wait_weight=100.0)
    state = state_with([], [short, long, tiny], 40, aged)
    assert [r.id for r in state.waiting] == [2, 1, 3]
    assert aged.form_batch(state).admit == ()


def test_parameters_reach_the_mechanisms_and_bad_ones_are_refused() -> None:
    former = make_batch_former(
        "asf", wait_weight=3.0, distribution="loguniform", protect_share=0.8, ratio_max=1.5
    )
    assert isinstance(former, ASFBatchFormer)
    assert (former.wait_weight, former.distribution, former.protect_share) == (
        3.0,
        "loguniform",
        0.8,
    )
    assert former.reservation.maximum == 1.5
    former.reservation.observe(0, overflowed=True)
    former.reset()
    assert former.reservation.ratio == former.reservation.initial
    for bad in (
        {"distribution": "normal"},
        {"wait_weight": -1.0},
        {"protect_share": 0.0},
        {"ratio_min": 0.5, "ratio_initial": 0.2},
        {"lookahead": 3},
    ):
        with pytest.raises(ValueError):
            make_batch_former("asf", **bad)


def test_rejects_what_cannot_fit_with_its_upper_bound_like_vllm() -> None:
    former = make_batch_former("asf")
    request = WaitingRequest(1, 0.0, 10, LengthInterval(5, 95))
    assert former.planning_length(request) == 95
