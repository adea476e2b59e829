"""`SchedulingLoop`: snapshot, form batch, validate, apply, execute, update: one iteration.

The simulator and the service run this same loop; only the `Executor` differs. The loop owns
the queues and the KV accounting (a running request holds prompt + tokens so far, including the
one being produced; memory is freed at completion) and what an eviction means:
- `resume` (default, what vLLM does): the request frees its KV but keeps its tokens; when it is
  admitted again it prefills prompt + those tokens in one go and continues with the next token.
- `restart` (the papers' model): it loses its progress and regenerates from scratch.
Latency is counted from arrival either way. An invalid decision raises (algorithms.decision).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from algorithms.batch import BatchView
from algorithms.decision import settle
from algorithms.errors import RequestRejectedError
from algorithms.protocols import AdmissionRefiner, BatchFormer, IntervalRefiner
from algorithms.state import RunningSet, SchedulerState, WaitingQueue
from algorithms.types import RequestId, WaitingRequest

PREEMPTION_MODES = ("resume", "restart")


@dataclass(frozen=True, slots=True)
class StepResult:
    """An executor's report on one iteration: its duration, the requests that emitted their last
    token, the token id each producing row emitted (`tokens`, in row order; empty from an
    executor without a model, the simulator's) and why each finished request stopped
    (`finish_reasons`: "stop" for EOS/stop, "length" for max_tokens; empty likewise)."""

    elapsed_s: float
    finished: tuple[RequestId, ...]
    tokens: Mapping[RequestId, int] = field(default_factory=dict)
    finish_reasons: Mapping[RequestId, str] = field(default_factory=dict)


class Executor(Protocol):
    """Runs one iteration of the batch the loop formed.

    `batch` is a read-only view of the batch after admissions and evictions (`BatchView`). Row j
    prefills `prefill_tokens[j]` prompt tokens (the whole prompt in its first iteration unless
    prefill is chunked) and, where `produces[j]`, emits one token. Returns the iteration's
    `StepResult`: the requests that emitted their last token in it, and with a model the tokens.
    """

    def execute(
        self, batch: BatchView, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> StepResult: ...


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What one `SchedulingLoop.step` did, for metrics and streaming; `tokens` and
    `finish_reasons` are the executor's (`StepResult`)."""

    step: int
    elapsed_s: float
    admitted: tuple[RequestId, ...]
    evicted: tuple[RequestId, ...]
    finished: tuple[RequestId, ...]
    rejected: tuple[RequestId, ...]
    first_tokens: tuple[RequestId, ...]
    batch_size: int
    kv_tokens: int
    recomputed_tokens: int = 0  # prompt tokens prefilled again for re-admitted evicted requests
    tokens: Mapping[RequestId, int] = field(default_factory=dict)
    finish_reasons: Mapping[RequestId, str] = field(default_factory=dict)


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
        preemption: str = "resume",
    ) -> None:
        """`max_num_batched_tokens` turns on chunked prefill (vLLM's name): decode tokens come
        first, the rest of the budget prefills prompts in admission order, and a request emits
        its first token in the iteration that completes its prompt. None (default) prefills
        every prompt whole in its first iteration, as in the papers. `refiner` updates running
        requests' intervals before every batch formation (None: intervals stay as predicted).
        `preemption` is what an evicted request keeps: "resume" or "restart" (module doc)."""
        if kv_capacity_tokens < 1:
            raise ValueError("kv_capacity_tokens must be >= 1")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        if max_num_batched_tokens is not None and max_num_batched_tokens < 1:
            raise ValueError("max_num_batched_tokens must be >= 1")
        if preemption not in PREEMPTION_MODES:
            raise ValueError(f"preemption must be one of {PREEMPTION_MODES}, got {preemption!r}")
        self.former = former
        self.executor = executor
        self.kv_capacity_tokens = kv_capacity_tokens
        self.max_batch_size = max_batch_size
        self.max_num_batched_tokens = max_num_batched_tokens
        self.refiner = refiner
        self.preemption = preemption
        self.waiting = WaitingQueue(key=former.waiting_key)
        self.running = RunningSet(resume=preemption == "resume")
        self.step_index = 0
        self.num_forced_evictions = 0

    @property
    def has_work(self) -> bool:
        return bool(len(self.waiting) or len(self.running))

    def can_ever_fit(self, request: WaitingRequest) -> bool:
        """Whether prompt + planning length fits in an empty cache.

        A request evicted after g tokens and restarted is known to need at least g + 1.
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
        settled = settle(
            self.former,
            decision,
            self.waiting,
            self.running,
            self.kv_capacity_tokens,
            max_batch_size=self.max_batch_size,
            chunked=self.max_num_batched_tokens is not None,
        )
        if settled.forced:
            self.num_forced_evictions += len(settled.evict)
        evicted = self._evict(settled.evict)
        rejected = self._reject_hopeless(evicted)
        admitted = [self.waiting.pop(i) for i in settled.admit if i not in rejected]
        recomputed = sum(r.prompt_tokens for r in admitted if r.num_evictions)
        self.running.admit(admitted, self.step_index, self.kv_capacity_tokens)
        kv_tokens = self.running.next_step_tokens()
        batch_size = len(self.running)
        prefill, produces = self._plan_tokens()
        running = self.running
        first_tokens = running.ids[produces & (running.generated == 0) & (running.resumed == 0)]
        result = self.executor.execute(BatchView.of(running), prefill, produces)
        running.advance(prefill, produces)
        if result.finished:
            keep = ~np.isin(running.ids, np.asarray(result.finished, dtype=np.int64))
            running.remove(keep)
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
            recomputed,
            result.tokens,
            result.finish_reasons,
        )

    def _refine(self) -> None:
        running = self.running
        if self.refiner is None or not len(running):
            return
        rows = np.flatnonzero(running.generated > 0)
        if not len(rows):
            return
        # the refiner sees whole-request lengths: a resumed row's earlier tokens count
        kept = running.resumed[rows]
        current = (
            running.lo[rows] + kept,
            running.hi[rows] + kept,
            running.generated[rows] + kept,
            running.max_tokens[rows] + kept,
        )
        if isinstance(self.refiner, AdmissionRefiner):  # a resumed row: its re-admission interval
            admitted = (running.admitted_lo[rows] + kept, running.admitted_hi[rows] + kept)
            lo, hi = self.refiner.refine_admitted(*admitted, *current)
        else:
            lo, hi = self.refiner.refine(*current)
        running.lo[rows], running.hi[rows] = lo - kept, hi - kept

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
