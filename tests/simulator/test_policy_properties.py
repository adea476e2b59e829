"""Hypothesis properties of every batch former run end to end through the simulator (issue #2
tests): every request completes exactly once, prediction misses lose none, runs repeat exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from algorithms import REGISTRY
from simulator.cost_model import load_cost_model
from simulator.run import Workload, simulate
from tests.strategies import workloads

POLICIES = sorted(REGISTRY)


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
