"""Hypothesis properties of every batch former on random small instances (issue #2 tests), on
the loop with a fake executor; the end-to-end ones are in test_policy_properties.py (simulation
tests)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from algorithms import REGISTRY, SchedulingLoop, make_batch_former
from algorithms.loop import StepOutcome
from tests.algorithms.fake_executor import FakeExecutor
from tests.jobs import Jobs
from tests.strategies import jobs

POLICIES = sorted(REGISTRY)
NON_EVICTING = [name for name, cls in REGISTRY.items() if not cls.can_evict]


def step_trace(workload: Jobs, capacity: int, policy: str) -> list[StepOutcome]:
    """Run the loop by hand (backlog) and keep every step's outcome."""
    params = {"true_lengths": workload.output_tokens} if policy == "hsf" else {}
    former = make_batch_former(policy, **params)
    loop = SchedulingLoop(former, FakeExecutor(workload.output_tokens), capacity)
    for i in range(len(workload)):
        loop.add_request(workload.request(i))
    outcomes = []
    while loop.has_work:
        outcomes.append(loop.step(float(len(outcomes))))
        assert len(outcomes) < 10_000, "no progress"
    return outcomes


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=30, deadline=None)
@given(instance=jobs())
def test_memory_never_exceeds_capacity(policy: str, instance: tuple[Jobs, int]) -> None:
    workload, capacity = instance
    for outcome in step_trace(workload, capacity, policy):
        assert outcome.kv_tokens <= capacity


@pytest.mark.parametrize("policy", NON_EVICTING)
@settings(max_examples=30, deadline=None)
@given(instance=jobs())
def test_non_evicting_policies_never_evict(policy: str, instance: tuple[Jobs, int]) -> None:
    workload, capacity = instance
    assert all(not o.evicted for o in step_trace(workload, capacity, policy))


@pytest.mark.parametrize("policy", POLICIES)
@settings(max_examples=15, deadline=None)
@given(instance=jobs())
def test_batch_size_cap_is_respected(policy: str, instance: tuple[Jobs, int]) -> None:
    workload, capacity = instance
    params = {"true_lengths": workload.output_tokens} if policy == "hsf" else {}
    loop = SchedulingLoop(
        make_batch_former(policy, **params),
        FakeExecutor(workload.output_tokens),
        capacity,
        max_batch_size=2,
    )
    for i in range(len(workload)):
        loop.add_request(workload.request(i))
    while loop.has_work:
        assert loop.step(0.0).batch_size <= 2
