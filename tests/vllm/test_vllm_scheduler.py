"""Contract and parity tests of KvschedScheduler inside vLLM 0.33's real scheduler (issue 7).

The scenarios run once in the vLLM venv (conftest.vllm_report); each test here asserts one
property for every policy that needs no oracle. Parity replays the same workload through our
SchedulingLoop with a simulated executor, here in the main environment.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from vllm_workloads import BLOCK_SIZE, EVICTING, POLICIES, TIGHT, Job, jobs

from algorithms import SchedulingLoop, StepResult, make_batch_former
from algorithms.batch import BatchView
from algorithms.types import LengthInterval, WaitingRequest
from service.vllm_ext.views import capacity_tokens, interval_from_extra_args, view_prompt_tokens

NUM_BLOCKS = 20


def contract_jobs(policy: str) -> list[Job]:
    return jobs(1, 14, tight=policy in TIGHT)


def check_accounting(run: dict[str, Any], evicting: bool) -> None:
    """vLLM never needs more KV than the former planned, and only preempts its victims."""
    for step, (used, view) in enumerate(zip(run["used_blocks"], run["view_tokens"], strict=True)):
        assert used * BLOCK_SIZE <= view, f"step {step}: {used} blocks > {view} planned tokens"
        assert used * BLOCK_SIZE <= run["capacity_tokens"]
    assert run["preempted"] == run["evicted"], "vLLM preempted a request the former did not"
    assert run["stats"]["num_vllm_preemptions"] == 0
    if not evicting:
        assert not any(run["preempted"])


def check_finished(run: dict[str, Any], workload: list[Job], aborted: set[str]) -> None:
    for job in workload:
        if job.request_id in aborted:
            assert run["finish_reasons"].get(job.request_id) != "length"
            continue
        assert run["tokens"][job.request_id] == job.max_tokens, job.request_id
        assert run["finish_reasons"][job.request_id] == "length"
    assert run["end_mirror"] == [0, 0] and run["end_requests"] == 0
    assert run["end_free_blocks"] == run["num_blocks"] - 1, "blocks still held at the end"


@pytest.mark.parametrize("policy", POLICIES)
def test_admissions_are_the_formers_decision_in_order(
    vllm_report: dict[str, Any], policy: str
) -> None:
    run = vllm_report["contract"][policy]
    for step, (admitted, decided) in enumerate(zip(run["admitted"], run["decided"], strict=True)):
        assert admitted == decided, f"step {step}: vLLM admitted {admitted}, former {decided}"
    assert sum(map(len, run["admitted"])) >= len(contract_jobs(policy))


@pytest.mark.parametrize("policy", POLICIES)
def test_no_kv_over_allocation(vllm_report: dict[str, Any], policy: str) -> None:
    run = vllm_report["contract"][policy]
    check_accounting(run, policy in EVICTING)
    assert run["stats"]["num_forced_evictions"] == 0
    assert max(run["used_blocks"]) >= NUM_BLOCKS // 2, "the workload never filled the cache"


@pytest.mark.parametrize("policy", POLICIES)
def test_every_request_finishes_with_its_token_count(
    vllm_report: dict[str, Any], policy: str
) -> None:
    check_finished(vllm_report["contract"][policy], contract_jobs(policy), set())


def test_amin_evicts_through_vllm_preemption(vllm_report: dict[str, Any]) -> None:
    run = vllm_report["contract"]["amin"]
    victims = [i for step in run["evicted"] for i in step]
    assert len(victims) >= 2 and run["stats"]["num_policy_evictions"] == len(victims)
    # every victim came back (vLLM resumed it) and finished with exactly max_tokens tokens
    for victim in set(victims):
        later = [s for s, ids in enumerate(run["admitted"]) if victim in ids]
        assert len(later) >= 2, f"{victim} was never re-admitted"
    check_finished(run, contract_jobs("amin"), set())


@pytest.mark.parametrize("policy", POLICIES)
def test_front_end_aborts_are_released(vllm_report: dict[str, Any], policy: str) -> None:
    run = vllm_report["abort"][policy]
    aborted = set(run["aborted"])
    assert len(aborted) == 2
    assert run["still_tracked"] == [] and run["still_in_vllm"] == []
    assert run["freed_blocks"] >= 1, "aborting a running request freed no block"
    assert not any(aborted & set(ids) for ids in run["admitted"][7:])
    check_accounting(run, policy in EVICTING)
    check_finished(run, contract_jobs(policy), aborted)


@pytest.mark.parametrize("section", ["chunked", "prefix"])
@pytest.mark.parametrize("policy", ["fcfs", "amin", "asf", "sorted-f-c"])
def test_chunked_prefill_and_prefix_cache_hits(
    vllm_report: dict[str, Any], section: str, policy: str
) -> None:
    run = vllm_report[section][policy]
    check_accounting(run, policy in TIGHT or run["stats"]["num_forced_evictions"] > 0)
    if section == "chunked":
        check_finished(run, jobs(3, 12, tight=True), set())
        assert run["stats"]["num_admissions_deferred"] > 0, "the token budget never bit"
    else:
        check_finished(run, jobs(4, 12, shared_prefix=32, tight=True), set())
        assert sum(run["cached_tokens"].values()) >= 32, "no prefix-cache hit happened"


def test_bad_configuration_and_bad_xargs(vllm_report: dict[str, Any]) -> None:
    assert vllm_report["bad_config"].startswith("unknown policy 'no-such-policy'")
    bad = vllm_report["bad_xargs"]
    assert bad["finish_reasons"] == {"good": "length", "bad": "error"}
    assert bad["tokens"]["good"] == 4 and bad["tokens"]["bad"] == 0


class TrueLengths:
    """Simulated executor: a request finishes when it has produced its true length."""

    def __init__(self, lengths: dict[int, int]) -> None:
        self.lengths = lengths

    def execute(
        self, batch: BatchView, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> StepResult:
        true = np.array([self.lengths[int(i)] for i in batch.ids], dtype=np.int64)
        done = batch.ids[produces & (batch.resumed + batch.generated + 1 >= true)]
        return StepResult(1.0, tuple(int(i) for i in done))


def loop_trace(policy: str, workload: list[Job], num_steps: int) -> dict[str, list[list[str]]]:
    """The same requests, seen as the scheduler's views, through SchedulingLoop."""
    capacity = capacity_tokens(NUM_BLOCKS, BLOCK_SIZE)
    loop = SchedulingLoop(
        make_batch_former(policy),
        TrueLengths({k: job.max_tokens for k, job in enumerate(workload)}),
        capacity,
        max_batch_size=64,
    )
    out: dict[str, list[list[str]]] = {"admitted": [], "evicted": [], "finished": []}
    for step in range(num_steps):
        for k, job in enumerate(workload):
            if job.arrival_step == step:
                prompt = view_prompt_tokens(len(job.prompt), BLOCK_SIZE)
                interval, _ = interval_from_extra_args(job.xargs, job.max_tokens)
                hi = min(interval.hi, capacity - prompt)
                view = LengthInterval(min(interval.lo, hi), hi)
                loop.add_request(
                    WaitingRequest(k, float(step), prompt, view, max_tokens=job.max_tokens)
                )
        outcome = loop.step(float(step))
        for key, ids in (
            ("admitted", outcome.admitted),
            ("evicted", outcome.evicted),
            ("finished", outcome.finished),
        ):
            out[key].append([workload[i].request_id for i in ids])
    return out


@pytest.mark.parametrize("policy", POLICIES)
def test_parity_with_scheduling_loop(vllm_report: dict[str, Any], policy: str) -> None:
    """Same admissions (in order), evictions and finishes, step for step, to the end of the
    run: the loop's resume preemption keeps a victim's tokens as vLLM does."""
    run = vllm_report["parity"][policy]
    workload = jobs(2, 12, tight=policy in TIGHT)
    ref = loop_trace(policy, workload, len(run["admitted"]))
    evictions = [s for s, ids in enumerate(ref["evicted"]) if ids]
    if policy in TIGHT:  # under-planned intervals make it evict: the case that matters
        assert evictions
    for step in range(len(ref["admitted"])):
        assert run["admitted"][step] == ref["admitted"][step], f"admitted, step {step}"
        assert run["evicted"][step] == sorted(ref["evicted"][step]), f"evicted, step {step}"
        assert sorted(run["finished"][step]) == sorted(ref["finished"][step]), f"step {step}"
    assert sum(map(len, ref["finished"])) == len(workload)
