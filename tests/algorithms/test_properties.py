"""Hypothesis properties of every batch former on random small instances (issue #2 tests)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from algorithms import REGISTRY, SchedulingLoop, make_batch_former
from algorithms.loop import StepOutcome
from simulator.cost_model import load_cost_model
from simulator.executor import SimulatedExecutor
from simulator.run import Workload, simulate
from tests.strategies import workloads

POLICIES = sorted(REGISTRY)
NON_EVICTING = [name for name, cls in REGISTRY.items() if not cls.can_evict]


def step_trace(workload: Workload, capacity: int, policy: str) -> list[StepOutcome]:
    """Run the loop by hand (backlog) and keep every step's outcome."""
    params = {"true_lengths": workload.output_tokens} if policy == "hsf" else {}
    former = make_batch_former(policy, **params)
    cost = load_cost_model("unit", kv_tokens=capacity)
    loop = SchedulingLoop(former, SimulatedExecutor(workload.output_tokens, cost), capacity)
    for i in range(len(workload)):
        loop.add_request(workload.request(i))
    outcomes = []
    while loop.has_work:
        outcomes.append(loop.step(float(len(outcomes))))
        assert len(outcomes) < 10_000, "no progress"
    return outcomes


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=40, deadline=None)
@given(instance=workloads())
def test_every_request_completes_exactly_once(policy: str, instance: tuple[Workload, int]) -> None:
    workload, capacity = instance
    result = simulate(workload, policy, load_cost_model("unit", kv_tokens=capacity))
    assert result.summary["completed"] + result.summary["rejected"] == len(workload)
    done = ~np.isnan(result.log.completion_s)
    assert np.all(done != result.log.rejected)
    # a request cannot finish sooner than its output length after arrival
    e2e = result.log.completion_s[done] - workload.arrival_s[done]
    assert np.all(e2e >= workload.output_tokens[done])


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=30, deadline=None)
@given(instance=workloads())
def test_memory_never_exceeds_capacity(policy: str, instance: tuple[Workload, int]) -> None:
    workload, capacity = instance
    for outcome in step_trace(workload, capacity, policy):
        assert outcome.kv_tokens <= capacity


@pytest.mark.parametrize("policy", NON_EVICTING)
@settings(max_examples=30, deadline=None)
@given(instance=workloads())
def test_non_evicting_policies_never_evict(policy: str, instance: tuple[Workload, int]) -> None:
    workload, capacity = instance
    assert all(not o.evicted for o in step_trace(workload, capacity, policy))


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=15, deadline=None)
@given(instance=workloads(within_interval=False))
def test_prediction_misses_never_lose_a_request(
    policy: str, instance: tuple[Workload, int]
) -> None:
    """True lengths outside [lo, hi]: forced evictions may happen, requests still finish."""
    workload, capacity = instance
    result = simulate(workload, policy, load_cost_model("unit", kv_tokens=capacity))
    assert result.summary["completed"] + result.summary["rejected"] == len(workload)


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=10, deadline=None)
@given(instance=workloads())
def test_same_input_same_result(policy: str, instance: tuple[Workload, int]) -> None:
    workload, capacity = instance
    cost = load_cost_model("unit", kv_tokens=capacity)
    first, second = simulate(workload, policy, cost), simulate(workload, policy, cost)
    assert np.array_equal(first.log.completion_s, second.log.completion_s, equal_nan=True)
    assert first.summary["evictions"] == second.summary["evictions"]


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=15, deadline=None)
@given(instance=workloads())
def test_batch_size_cap_is_respected(policy: str, instance: tuple[Workload, int]) -> None:
    workload, capacity = instance
    params = {"true_lengths": workload.output_tokens} if policy == "hsf" else {}
    cost = load_cost_model("unit", kv_tokens=capacity)
    loop = SchedulingLoop(
        make_batch_former(policy, **params),
        SimulatedExecutor(workload.output_tokens, cost),
        capacity,
        max_batch_size=2,
    )
    for i in range(len(workload)):
        loop.add_request(workload.request(i))
    while loop.has_work:
        assert loop.step(0.0).batch_size <= 2
