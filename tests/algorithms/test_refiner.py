"""The loop applies an interval refiner to running requests, and the formers plan with it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from numpy.typing import NDArray

from algorithms import REGISTRY, SchedulingLoop, make_batch_former
from simulator.cost_model import load_cost_model
from simulator.executor import SimulatedExecutor
from simulator.run import Workload, simulate
from tests.factories import CASE_3, make_workload
from tests.strategies import workloads

IntArray = NDArray[np.int64]


class SurvivorRefiner:
    """lo <- max(lo, g + 1); hi <- max(hi, 2g) capped: what a calibrated ladder does, roughly."""

    def __init__(self) -> None:
        self.calls = 0

    def refine(
        self, lo: IntArray, hi: IntArray, generated: IntArray, max_tokens: IntArray
    ) -> tuple[IntArray, IntArray]:
        self.calls += 1
        assert np.all(generated >= 1)
        new_lo = np.maximum(lo, generated + 1)
        new_hi = np.minimum(np.maximum(np.maximum(hi, 2 * generated), new_lo), max_tokens)
        return np.minimum(new_lo, new_hi), new_hi


def reference_case_3() -> tuple[Workload, int]:
    workload = make_workload(prompts=CASE_3["prompts"], outputs=CASE_3["outputs"], interval=(2, 8))
    return workload, int(CASE_3["capacity"])  # type: ignore[call-overload]


def test_refined_bounds_reach_running_and_evicted_requests() -> None:
    """Running rows carry lo >= g + 1 after refinement, and an evicted request keeps it."""
    workload, capacity = reference_case_3()
    cost = load_cost_model("unit", kv_tokens=capacity)
    refiner = SurvivorRefiner()
    loop = SchedulingLoop(
        make_batch_former("amin"),
        SimulatedExecutor(workload.output_tokens, cost),
        capacity,
        refiner=refiner,
    )
    for i in range(len(workload)):
        loop.add_request(workload.request(i))
    evictions = 0
    while loop.has_work:
        outcome = loop.step(0.0)
        evictions += len(outcome.evicted)
        running = loop.running
        started = running.generated > 1  # refined at the start of this step with g >= 1
        assert np.all(running.lo[started] >= running.generated[started])
        for request in loop.waiting:
            if request.num_evictions:
                assert request.interval.lo >= request.max_generated + 1
    assert refiner.calls > 0 and evictions > 0


def test_refined_upper_bound_makes_amax_plan_survivors_longer() -> None:
    # request 0 outlives hi = 2 (true 10): with the refiner its hi has doubled to 8 by the
    # time request 1 arrives, so amax keeps request 1 waiting; without it amax plans request 0
    # to end next iteration, admits request 1, and the loop must fall back to forced eviction
    workload = make_workload(prompts=[2, 2], outputs=[10, 3], lo=[1, 1], hi=[2, 3], arrivals=[0, 4])
    cost = load_cost_model("unit", kv_tokens=13)
    refined = simulate(workload, "amax", cost, refiner=SurvivorRefiner())
    plain = simulate(workload, "amax", cost)
    assert refined.summary["evictions"] == 0
    assert plain.summary["evictions"] >= 1
    assert refined.summary["completed"] == plain.summary["completed"] == 2
    assert refined.log.first_start_s.tolist() == [0.0, 10.0]


@pytest.mark.parametrize("policy", sorted(REGISTRY))
@settings(max_examples=15, deadline=None)
@given(instance=workloads(within_interval=False))
def test_refiner_never_loses_requests_or_overflows(
    policy: str, instance: tuple[Workload, int]
) -> None:
    workload, capacity = instance
    cost = load_cost_model("unit", kv_tokens=capacity)
    result = simulate(workload, policy, cost, refiner=SurvivorRefiner())
    assert result.summary["completed"] + result.summary["rejected"] == len(workload)
    assert result.summary["peak_kv_tokens"] <= capacity
