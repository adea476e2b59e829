"""`SchedulingLoop`: snapshot, form batch, validate, apply, execute, update: one iteration.

The simulator and the service run this same loop; only the `Executor` differs. The loop owns
the queues and the KV accounting of spec §1.2 (a running request holds prompt + tokens so far,
including the one being produced; memory is freed at completion) and the eviction semantics of
§1.5 (full restart, latency still counted from arrival). An invalid decision raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from algorithms.errors import CapacityExceededError, InvalidDecisionError, RequestRejectedError
from algorithms.protocols import BatchFormer, IntervalRefiner
from algorithms.state import RunningSet, SchedulerState, WaitingQueue
from algorithms.types import BatchDecision, RequestId, WaitingRequest


@dataclass(frozen=True, slots=True)
class StepResult:
    """An executor's report on one iteration: its duration and the requests that finished."""

    elapsed_s: float
    finished: tuple[RequestId, ...]


class Executor(Protocol):
    """Runs one iteration of the batch the loop formed.

    `running` is the batch after admissions and evictions; `running.generated` counts tokens
    produced before this iteration. Row j prefills `prefill_tokens[j]` prompt tokens (the whole
    prompt in its first iteration unless prefill is chunked) and, where `produces[j]`, emits one
    token. Returns the requests that emitted their last token in this iteration.
    """

    def execute(
        self, running: RunningSet, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> StepResult: ...


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What one `SchedulingLoop.step` did, for metrics and streaming."""

    step: int
    elapsed_s: float
    admitted: tuple[RequestId, ...]
    evicted: tuple[RequestId, ...]
    finished: tuple[RequestId, ...]
    rejected: tuple[RequestId, ...]
    first_tokens: tuple[RequestId, ...]
    batch_size: int
    kv_tokens: int


class SchedulingLoop:
    """Drives one worker: a batch former, an executor and a KV cache of `kv_capacity_tokens`."""

    def __init__(
        self,
        former: BatchFormer,
        executor: Executor,
        kv_capacity_tokens: int,
        *,
        max_batch_size: int | None = None,
        max_num_batched_tokens: int | None = None,
        refiner: IntervalRefiner | None = None,
    ) -> None:
        """`max_num_batched_tokens` turns on chunked prefill (vLLM's name): decode tokens come
        first, the rest of the budget prefills prompts in admission order, and a request emits
        its first token in the iteration that completes its prompt. None (default) prefills
        every prompt whole in its first iteration, as in the papers. `refiner` updates running
        requests' intervals before every batch formation (None: intervals stay as predicted)."""
        if kv_capacity_tokens < 1:
            raise ValueError("kv_capacity_tokens must be >= 1")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_num_batched_tokens is not None and max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        self.former = former
        self.executor = executor
        self.kv_capacity_tokens = kv_capacity_tokens
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self.refiner = refiner
        self.waiting = WaitingQueue(key=former.waiting_key)
        self.running = RunningSet()
        self.step_index = 0
        self.num_forced_evictions = 0

    @property
    def has_work(self) -> bool:
        return bool(len(self.waiting) or len(self.running))

    def can_ever_fit(self, request: WaitingRequest) -> bool:
        """Whether prompt + planning length fits in an empty cache.

        A request evicted after g tokens is known to need at least g + 1 of them.
        """
        planned = max(self.former.planning_length(request), request.max_generated + 1)
        return request.prompt_tokens + planned <= self.kv_capacity_tokens

    def add_request(self, request: WaitingRequest) -> None:
        """Queue an arrived request; raise `RequestRejectedError` if it can never fit."""
        if not self.can_ever_fit(request):
            raise RequestRejectedError(
                f"request {request.id}: prompt {request.prompt_tokens} + planned output "
                f"{self.former.planning_length(request)} exceeds KV capacity "
                f"{self.kv_capacity_tokens}"
            )
        self.waiting.add(request)

    def abort(self, request_id: RequestId) -> bool:
        """Drop a request wherever it is (client gone); its KV is free for the next iteration.

        Returns False when the loop does not hold it (already finished or never added).
        """
        if request_id in self.waiting:
            self.waiting.pop(request_id)
            return True
        if request_id in self.running:
            self.running.remove(self.running.ids != request_id)
            return True
        return False

    def state(self, now_s: float) -> SchedulerState:
        return SchedulerState(
            self.step_index,
            now_s,
            self.waiting,
            self.running,
            self.kv_capacity_tokens,
            self.max_batch_size,
        )

    def step(self, now_s: float) -> StepOutcome:
        """Run one iteration starting at `now_s`."""
        self._refine()
        decision = self.former.form_batch(self.state(now_s))
        self._validate(decision)
        admit, forced = self._fit_capacity(decision)
        evicted = self._evict(decision.evict + forced)
        rejected = self._reject_hopeless(evicted)
        admitted = [self.waiting.pop(i) for i in admit if i not in rejected]
        self.running.admit(admitted, self.step_index, self.kv_capacity_tokens)
        kv_tokens = self.running.next_step_tokens()
        batch_size = len(self.running)
        prefill, produces = self._plan_tokens()
        first_tokens = self.running.ids[produces & (self.running.generated == 0)]
        result = self.executor.execute(self.running, prefill, produces)
        self.running.advance(prefill, produces)
        if result.finished:
            keep = ~np.isin(self.running.ids, np.asarray(result.finished, dtype=np.int64))
            self.running.remove(keep)
        self.step_index += 1
        return StepOutcome(
            self.step_index - 1,
            result.elapsed_s,
            tuple(r.id for r in admitted),
            tuple(evicted),
            result.finished,
            tuple(rejected),
            tuple(int(i) for i in first_tokens),
            batch_size,
            kv_tokens,
        )

    def _refine(self) -> None:
        running = self.running
        if self.refiner is None or not len(running):
            return
        rows = np.flatnonzero(running.generated > 0)
        if not len(rows):
            return
        lo, hi = self.refiner.refine(
            running.lo[rows], running.hi[rows], running.generated[rows], running.max_tokens[rows]
        )
        running.lo[rows], running.hi[rows] = lo, hi

    def _plan_tokens(self) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """Prompt tokens each row prefills in this iteration, and which rows emit a token."""
        left = self.running.prefill_left
        if self.max_num_batched_tokens is None:
            return left.copy(), np.ones(len(left), dtype=bool)
        decoding = left == 0
        budget = max(0, self.max_num_batched_tokens - int(decoding.sum()))
        earlier = np.cumsum(left) - left  # prompt tokens of rows admitted before this one
        chunk = np.clip(budget - earlier, 0, left)
        return chunk, decoding | ((left > 0) & (chunk == left))

    def _validate(self, decision: BatchDecision) -> None:
        name = self.former.name
        if decision.evict and not self.former.can_evict:
            raise InvalidDecisionError(f"{name}: evicted {decision.evict} but cannot evict")
        if len(set(decision.evict)) != len(decision.evict):
            raise InvalidDecisionError(f"{name}: evicts a request twice: {decision.evict}")
        if len(set(decision.admit)) != len(decision.admit):
            raise InvalidDecisionError(f"{name}: admits a request twice: {decision.admit}")
        for request_id in decision.evict:
            if request_id not in self.running:
                raise InvalidDecisionError(f"{name}: evicts {request_id}, which is not running")
        evicted = set(decision.evict)
        for request_id in decision.admit:
            if request_id not in self.waiting and request_id not in evicted:
                raise InvalidDecisionError(f"{name}: admits {request_id}, which is not waiting")
        size = len(self.running) - len(evicted) + len(decision.admit)
        if self.max_batch_size is not None and size > self.max_batch_size:
            raise InvalidDecisionError(
                f"{name}: batch of {size} exceeds max_batch_size {self.max_batch_size}"
            )

    def _decision_tokens(self, decision: BatchDecision) -> int:
        tokens = self.running.next_step_tokens()
        for request_id in decision.evict:
            j = self.running.position(request_id)
            tokens -= int(self.running.prompt_tokens[j] + self.running.generated[j] + 1)
        for request_id in decision.admit:  # waiting, or evicted by this same decision
            if request_id in self.waiting:
                tokens += self.waiting.get(request_id).prompt_tokens + 1
            else:
                tokens += self.running.request(request_id).prompt_tokens + 1
        return tokens

    def _fit_capacity(
        self, decision: BatchDecision
    ) -> tuple[tuple[RequestId, ...], tuple[RequestId, ...]]:
        """Check this iteration's KV load; return (admissions, forced evictions).

        An overflow is a bug in the former unless it cannot evict and some running request has
        outlived its predicted upper bound (a prediction miss), or chunked prefill delayed
        first tokens past what the former projected. Then the loop drops this
        iteration's admissions and evicts the most recently started requests until the batch
        fits (spec §9 #18), counting them in `num_forced_evictions`.
        """
        overflow = self._decision_tokens(decision) - self.kv_capacity_tokens
        if overflow <= 0:
            return decision.admit, ()
        missed = bool(np.any(self.running.generated >= self.running.admitted_hi))
        chunked = self.max_num_batched_tokens is not None
        if self.former.can_evict or not (missed or chunked):
            raise CapacityExceededError(
                f"{self.former.name}: iteration {self.step_index} needs {overflow} KV tokens "
                f"more than the capacity {self.kv_capacity_tokens}"
            )
        forced = self.running.newest_victims(self.kv_capacity_tokens)
        self.num_forced_evictions += len(forced)
        return (), forced

    def _evict(self, request_ids: tuple[RequestId, ...]) -> list[RequestId]:
        if not request_ids:
            return []
        keep = ~np.isin(self.running.ids, np.asarray(request_ids, dtype=np.int64))
        for request in self.running.remove(keep):
            self.waiting.add(request)
        return list(request_ids)

    def _reject_hopeless(self, evicted: list[RequestId]) -> set[RequestId]:
        """Evicted requests whose refined planning length no longer fits fail, with a reason."""
        rejected = {i for i in evicted if not self.can_ever_fit(self.waiting.get(i))}
        for request_id in rejected:
            self.waiting.pop(request_id)
        return rejected
