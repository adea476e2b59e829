"""The formers plan with an interval refiner, end to end through the simulator."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from algorithms import REGISTRY
from simulator.cost_model import load_cost_model
from simulator.run import Workload, simulate
from tests.algorithms.test_refiner import SurvivorRefiner
from tests.factories import make_workload
from tests.strategies import workloads


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
