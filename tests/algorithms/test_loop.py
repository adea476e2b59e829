"""`SchedulingLoop` rejects invalid decisions loudly and applies valid ones exactly."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
from numpy.typing import NDArray

from algorithms import (
    BatchDecision,
    CapacityExceededError,
    InvalidDecisionError,
    LengthInterval,
    RequestRejectedError,
    SchedulerState,
    SchedulingLoop,
    StepResult,
    WaitingRequest,
    make_batch_former,
)
from algorithms.batch import BatchView
from algorithms.state import arrival_key
from tests.algorithms.fake_executor import FakeExecutor


class ScriptedFormer:
    """Returns a fixed decision: lets a test hand the loop something a real policy would not."""

    name: ClassVar[str] = "scripted"
    can_evict: ClassVar[bool] = False
    clairvoyant: ClassVar[bool] = False

    def __init__(self, decision: BatchDecision) -> None:
        self.decision = decision

    def waiting_key(self, request: WaitingRequest) -> Any:
        return arrival_key(request)

    def planning_length(self, request: WaitingRequest) -> int:
        return request.interval.hi

    def form_batch(self, state: SchedulerState) -> BatchDecision:
        return self.decision


def make_loop(decision: BatchDecision, capacity: int = 20) -> SchedulingLoop:
    outputs = np.array([3, 3, 3])
    executor = FakeExecutor(outputs)
    loop = SchedulingLoop(ScriptedFormer(decision), executor, capacity)
    for i in range(3):
        loop.add_request(WaitingRequest(i, 0.0, 5, LengthInterval(3, 3)))
    return loop


@pytest.mark.parametrize(
    ("decision", "error"),
    [
        (BatchDecision(admit=(7,)), "not waiting"),
        (BatchDecision(admit=(0, 0)), "twice"),
        (BatchDecision(evict=(0,)), "cannot evict"),
    ],
)
def test_invalid_decisions_raise(decision: BatchDecision, error: str) -> None:
    with pytest.raises(InvalidDecisionError, match=error):
        make_loop(decision).step(0.0)


def test_capacity_overflow_is_its_own_error() -> None:
    with pytest.raises(CapacityExceededError):
        make_loop(BatchDecision(admit=(0, 1, 2)), capacity=17).step(0.0)


def test_valid_admission_runs_and_finishes() -> None:
    loop = make_loop(BatchDecision(admit=(0, 1)))
    first = loop.step(0.0)
    assert first.admitted == (0, 1) and first.kv_tokens == 12
    loop.former = ScriptedFormer(BatchDecision.empty())  # type: ignore[assignment]
    assert loop.step(1.0).kv_tokens == 14
    third = loop.step(2.0)
    assert set(third.finished) == {0, 1} and len(loop.running) == 0 and len(loop.waiting) == 1


def test_request_that_can_never_fit_is_rejected() -> None:
    loop = make_loop(BatchDecision.empty(), capacity=20)
    with pytest.raises(RequestRejectedError, match="exceeds KV capacity"):
        loop.add_request(WaitingRequest(9, 0.0, 18, LengthInterval(1, 5)))


def test_unknown_policy_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="choose from .*amin"):
        make_batch_former("nope")


def test_hsf_refuses_to_run_without_true_lengths() -> None:
    with pytest.raises(ValueError, match="true output lengths"):
        make_batch_former("hsf")


def test_abort_frees_kv_of_running_and_drops_waiting() -> None:
    loop = make_loop(BatchDecision(admit=(0, 1)))
    loop.step(0.0)
    before = loop.running.next_step_tokens()
    assert loop.abort(0) and 0 not in loop.running
    assert loop.running.next_step_tokens() == before - (5 + 1 + 1)
    assert loop.abort(2) and 2 not in loop.waiting
    assert not loop.abort(2) and not loop.abort(99)


class EmittingExecutor:
    """Every producing row emits token 100 + its id and finishes with "stop"; keeps its views."""

    def __init__(self) -> None:
        self.views: list[BatchView] = []

    def execute(
        self, batch: BatchView, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> StepResult:
        self.views.append(batch)
        ids = batch.ids[produces].tolist()
        return StepResult(1.0, tuple(ids), {i: 100 + i for i in ids}, dict.fromkeys(ids, "stop"))


def test_the_executor_reads_a_frozen_batch_and_its_tokens_reach_the_outcome() -> None:
    executor = EmittingExecutor()
    loop = SchedulingLoop(make_batch_former("fcfs"), executor, 20)
    loop.add_request(WaitingRequest(0, 0.0, 5, LengthInterval(1, 1)))
    outcome = loop.step(0.0)
    assert outcome.finished == (0,)
    assert outcome.tokens == {0: 100} and outcome.finish_reasons == {0: "stop"}
    (view,) = executor.views
    assert view.kv_tokens == 6 and len(view) == 1
    assert view.prefill_left.tolist() == [5]  # a snapshot: the loop's update did not reach it
    with pytest.raises(ValueError, match="read-only"):
        view.generated[0] = 3
