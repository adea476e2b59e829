"""What an eviction keeps: resume (vLLM's recompute preemption) against restart (the papers)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from algorithms import (
    REGISTRY,
    LengthInterval,
    SchedulingLoop,
    WaitingRequest,
    make_batch_former,
)
from algorithms.loop import StepOutcome
from tests.algorithms.fake_executor import FakeExecutor
from tests.factories import make_jobs
from tests.jobs import Jobs
from tests.strategies import jobs

EVICTING = sorted(name for name, cls in REGISTRY.items() if cls.can_evict)


def run(
    workload: Jobs, capacity: int, policy: str, preemption: str
) -> tuple[FakeExecutor, list[StepOutcome]]:
    params = {"true_lengths": workload.output_tokens} if policy == "hsf" else {}
    executor = FakeExecutor(workload.output_tokens)
    loop = SchedulingLoop(
        make_batch_former(policy, **params), executor, capacity, preemption=preemption
    )
    for i in range(len(workload)):
        loop.add_request(workload.request(i))
    outcomes: list[StepOutcome] = []
    while loop.has_work:
        outcomes.append(loop.step(float(len(outcomes))))
        assert len(outcomes) < 10_000, "no progress"
    return executor, outcomes


def three_requests() -> Jobs:
    """Three requests that outgrow a 24-token cache under vLLM's policy (exact intervals)."""
    return make_jobs(prompts=[4, 4, 4], outputs=[6, 6, 6], lo=[1, 1, 1], hi=[6, 6, 6])


def test_resumed_request_continues_where_it_stopped() -> None:
    executor, outcomes = run(three_requests(), 24, "vllm", "resume")
    evicted = [i for o in outcomes for i in o.evicted]
    assert evicted, "the case must preempt"
    for request_id in range(3):
        # every output index exactly once, in order: nothing regenerated, nothing skipped
        assert executor.positions[request_id] == list(range(6))
    victim = evicted[0]
    # its first run's prompt, then prompt + the tokens it kept, prefilled again
    assert executor.prefilled[victim] > 2 * 4
    again = sum(executor.prefilled[i] - 4 for i in range(3))
    assert again == sum(o.recomputed_tokens for o in outcomes) > 0
    # the first token came out once, in its first run
    assert sum(victim in o.first_tokens for o in outcomes) == 1


def test_restart_regenerates_what_resume_keeps() -> None:
    resumed, _ = run(three_requests(), 24, "vllm", "resume")
    restarted, _ = run(three_requests(), 24, "vllm", "restart")
    assert sum(resumed.emitted.values()) == 18
    assert sum(restarted.emitted.values()) > 18  # evicted runs' tokens produced twice
    assert all(positions[0] == 0 for positions in restarted.positions.values())


def test_evicted_request_views_shift_by_the_kept_tokens() -> None:
    request = WaitingRequest(7, 1.5, 10, LengthInterval(4, 20), max_tokens=30)
    resumed = request.after_eviction(6, resume=True)
    assert (resumed.prompt_tokens, resumed.resumed) == (16, 6)
    assert resumed.interval == LengthInterval(1, 14)
    assert (resumed.max_tokens, resumed.num_evictions, resumed.max_generated) == (24, 1, 0)
    again = resumed.after_eviction(2, resume=True)
    assert (again.prompt_tokens, again.resumed, again.max_tokens) == (18, 8, 22)
    restarted = request.after_eviction(6)
    assert (restarted.prompt_tokens, restarted.resumed, restarted.max_generated) == (10, 0, 6)


def test_unknown_preemption_mode_is_refused() -> None:
    executor = FakeExecutor(np.array([1]))
    with pytest.raises(ValueError, match="resume"):
        SchedulingLoop(make_batch_former("vllm"), executor, 8, preemption="swap")


@pytest.mark.parametrize("policy", EVICTING)
@settings(max_examples=30, deadline=None)
@given(instance=jobs(within_interval=False))
def test_resume_emits_each_token_exactly_once(policy: str, instance: tuple[Jobs, int]) -> None:
    workload, capacity = instance
    executor, outcomes = run(workload, capacity, policy, "resume")
    finished = [i for o in outcomes for i in o.finished]
    rejected = {i for o in outcomes for i in o.rejected}
    assert len(finished) == len(set(finished))
    assert len(finished) + len(rejected) == len(workload)
    for request_id in finished:
        assert executor.positions[request_id] == list(
            range(int(workload.output_tokens[request_id]))
        )
    assert all(o.kv_tokens <= capacity for o in outcomes)
    # what re-admissions prefilled again is exactly what the loop reports as recomputed
    first = {i: int(workload.prompt_tokens[i]) for i in range(len(workload))}
    again = sum(executor.prefilled[i] - first[i] for i in executor.prefilled)
    assert again == sum(o.recomputed_tokens for o in outcomes)
