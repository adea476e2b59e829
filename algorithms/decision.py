"""One batch decision checked against the queues and the KV cache, before anything is applied.

The scheduling loop and the vLLM plug-in's mirror both call `settle`: it rejects a decision that
names requests wrongly, drops re-admissions that resume preemption does not allow, and, when the
next iteration would overflow the KV cache, either raises (a bug in the former) or replaces the
decision by forced evictions of the newest requests, as vLLM does when its allocation fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from algorithms.errors import CapacityExceededError, InvalidDecisionError
from algorithms.protocols import BatchFormer
from algorithms.state import RunningSet, WaitingQueue
from algorithms.types import BatchDecision, RequestId


@dataclass(frozen=True, slots=True)
class Settled:
    """What an iteration carries out: evict `evict`, then admit `admit` in this order.

    `forced` marks evictions the former did not choose (the loop made room on an overflow);
    the former's admissions are dropped then.
    """

    admit: tuple[RequestId, ...]
    evict: tuple[RequestId, ...]
    forced: bool = False


def settle(
    former: BatchFormer,
    decision: BatchDecision,
    waiting: WaitingQueue,
    running: RunningSet,
    capacity_tokens: int,
    *,
    max_batch_size: int | None = None,
    chunked: bool = False,
    strict: bool = True,
) -> Settled:
    """Validate `decision` and fit it to `capacity_tokens`.

    An overflow is a bug in the former (CapacityExceededError) unless it cannot evict and a
    running request outlived its admitted upper bound (a prediction miss), or chunked prefill
    delayed first tokens past its projection; `strict=False` (inside vLLM, where raising would
    kill the engine) forces evictions for any overflow. Forced evictions take the most recently
    started requests until the rest fit, and no admission happens in that iteration.
    """
    validate(former, decision, waiting, running, max_batch_size)
    admit = decision.admit
    if decision.evict and running.resume:
        # a resumed request comes back with prompt + kept tokens: a later iteration admits it
        evicted = set(decision.evict)
        admit = tuple(i for i in admit if i not in evicted)
    overflow = decision_tokens(running, waiting, admit, decision.evict) - capacity_tokens
    if overflow <= 0:
        return Settled(admit, decision.evict)
    if strict:
        missed = bool(np.any(running.generated >= running.admitted_hi))
        if former.can_evict or not (missed or chunked):
            raise CapacityExceededError(
                f"{former.name}: the next iteration needs {overflow} KV tokens more than the "
                f"capacity {capacity_tokens}"
            )
    return Settled((), running.newest_victims(capacity_tokens), forced=True)


def validate(
    former: BatchFormer,
    decision: BatchDecision,
    waiting: WaitingQueue,
    running: RunningSet,
    max_batch_size: int | None = None,
) -> None:
    """Raise InvalidDecisionError if `decision` names a request it may not."""
    if not decision.admit and not decision.evict:
        return
    name = former.name
    if decision.evict and not former.can_evict:
        raise InvalidDecisionError(f"{name}: evicted {decision.evict} but cannot evict")
    evicted = set(decision.evict)
    if len(evicted) != len(decision.evict):
        raise InvalidDecisionError(f"{name}: evicts a request twice: {decision.evict}")
    if len(set(decision.admit)) != len(decision.admit):
        raise InvalidDecisionError(f"{name}: admits a request twice: {decision.admit}")
    for request_id in decision.evict:
        if request_id not in running:
            raise InvalidDecisionError(f"{name}: evicts {request_id}, which is not running")
    for request_id in decision.admit:
        if request_id not in waiting and request_id not in evicted:
            raise InvalidDecisionError(f"{name}: admits {request_id}, which is not waiting")
    size = len(running) - len(evicted) + len(decision.admit)
    if max_batch_size is not None and size > max_batch_size:
        raise InvalidDecisionError(
            f"{name}: batch of {size} exceeds max_batch_size {max_batch_size}"
        )


def decision_tokens(
    running: RunningSet,
    waiting: WaitingQueue,
    admit: tuple[RequestId, ...],
    evict: tuple[RequestId, ...],
) -> int:
    """KV tokens the batch holds in the coming iteration after evicting and admitting."""
    tokens = running.next_step_tokens()
    for request_id in evict:
        j = running.position(request_id)
        tokens -= int(running.prompt_tokens[j] + running.generated[j] + 1)
    for request_id in admit:  # waiting, or (restart only) evicted by this same decision
        if request_id in waiting:
            tokens += waiting.get(request_id).prompt_tokens + 1
        else:
            tokens += running.request(request_id).prompt_tokens + 1
    return tokens
