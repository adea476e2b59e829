"""Chunked prefill (`max_num_batched_tokens`): prompts spread over iterations, decode first."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from algorithms import REGISTRY
from simulator.cost_model import load_cost_model
from simulator.run import Workload, simulate
from tests.factories import CASE_1, CASE_3, make_workload
from tests.strategies import workloads


def test_long_prompt_emits_first_token_when_its_last_chunk_is_done() -> None:
    workload = make_workload(prompts=[10], outputs=[3])
    cost = load_cost_model("unit", kv_tokens=100)
    result = simulate(workload, "fcfs", cost, max_num_batched_tokens=4)
    # chunks 4, 4, 2: first token at the end of iteration 3, then two more tokens
    assert result.log.first_token_s.tolist() == [3.0]
    assert result.log.completion_s.tolist() == [5.0]


def test_decode_tokens_come_before_new_prefill() -> None:
    # budget 2: iteration 0 prefills request 0 (1 token) and 1 token of request 1; from then
    # on request 0 decodes first and request 1 gets 1 prompt token per iteration, so its
    # 4-token prompt completes in iteration 3
    workload = make_workload(prompts=[1, 4], outputs=[4, 1])
    cost = load_cost_model("unit", kv_tokens=100)
    result = simulate(workload, "fcfs", cost, max_num_batched_tokens=2)
    assert result.log.first_token_s.tolist() == [1.0, 4.0]
    assert result.log.completion_s.tolist() == [4.0, 4.0]


@pytest.mark.parametrize(("case", "policy"), [(CASE_1, "mcsf"), (CASE_3, "amin")])
def test_budget_above_every_prompt_changes_nothing(case: dict[str, object], policy: str) -> None:
    workload = make_workload(
        prompts=case["prompts"],  # type: ignore[arg-type]
        outputs=case["outputs"],  # type: ignore[arg-type]
        interval=case.get("interval"),  # type: ignore[arg-type]
    )
    cost = load_cost_model("unit", kv_tokens=case["capacity"])  # type: ignore[arg-type]
    whole = simulate(workload, policy, cost)
    chunked = simulate(workload, policy, cost, max_num_batched_tokens=10_000)
    assert np.array_equal(whole.log.completion_s, chunked.log.completion_s)


@pytest.mark.parametrize("policy", sorted(REGISTRY))
@settings(max_examples=15, deadline=None)
@given(instance=workloads())
def test_chunked_prefill_never_loses_a_request_or_overflows(
    policy: str, instance: tuple[Workload, int]
) -> None:
    workload, capacity = instance
    cost = load_cost_model("unit", kv_tokens=capacity)
    result = simulate(workload, policy, cost, max_num_batched_tokens=4)
    assert result.summary["completed"] + result.summary["rejected"] == len(workload)
    assert result.summary["peak_kv_tokens"] <= capacity
