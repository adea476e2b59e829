"""Admission rules shared by the batch formers (SGLang's split of ordering from admission).

`admit_with_future_check`: walk the waiting queue in the former's order and admit while the
future-memory check (docs/algorithms.md) passes; stop at the first failure (our reading of the
papers) or skip it. `admit_while_prompt_fits`: vLLM's rule: admit in order while the new prompt fits
in the KV memory free *now*, no look-ahead; stop at the first that does not fit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from algorithms.memory import FutureMemory, IntArray
from algorithms.state import SchedulerState
from algorithms.types import BatchDecision, RequestId, WaitingRequest

PlanningLength = Callable[[WaitingRequest], int]


def admit_with_future_check(
    candidates: Iterable[WaitingRequest],
    planning_length: PlanningLength,
    memory: FutureMemory,
    room: int,
    *,
    skip_on_failure: bool = False,
) -> list[RequestId]:
    """Admit up to `room` candidates in order while every projected iteration stays within M.

    `memory` already holds the running jobs (and is updated in place). Stop at the first
    candidate that fails, or with `skip_on_failure` keep scanning the whole queue.
    """
    admitted: list[RequestId] = []
    for request in candidates:
        if len(admitted) >= room:
            break
        tokens_now = request.prompt_tokens + 1
        steps = planning_length(request)
        if memory.fits(tokens_now, steps):
            memory.add(tokens_now, steps)
            admitted.append(request.id)
        elif not skip_on_failure:
            break
    return admitted


def admit_while_prompt_fits(
    candidates: Iterable[WaitingRequest], free_tokens: int, room: int
) -> list[RequestId]:
    """Admit up to `room` in order while prompt + first token fits in `free_tokens`."""
    admitted: list[RequestId] = []
    for request in candidates:
        need = request.prompt_tokens + 1
        if len(admitted) >= room or need > free_tokens:
            break
        free_tokens -= need
        admitted.append(request.id)
    return admitted


def future_check_decision(
    state: SchedulerState,
    planning_length: PlanningLength,
    running_planned: IntArray,
    *,
    skip_on_failure: bool = False,
    reserve_fraction: float = 0.0,
) -> BatchDecision:
    """The whole decision of a non-evicting list scheduler (FCFS-MC, MC-SF, A_max, H-SF).

    Running requests are projected with `running_planned` (one per running row);
    `reserve_fraction` keeps that share of M out of the check (protection against predictions that
    are too short).
    """
    if not len(state.waiting) or state.batch_room() == 0:
        return BatchDecision.empty()
    capacity = int(state.kv_capacity_tokens * (1.0 - reserve_fraction))
    memory = FutureMemory.for_running(state.running, running_planned, capacity)
    admitted = admit_with_future_check(
        state.waiting, planning_length, memory, state.batch_room(), skip_on_failure=skip_on_failure
    )
    return BatchDecision(admit=tuple(admitted))


def check_fraction(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value
