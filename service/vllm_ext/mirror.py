"""The batch former's view of vLLM's queues, kept in step with vLLM's own (docs/vllm.md).

`Mirror` holds a `WaitingQueue` and a `RunningSet` of request views (service.vllm_ext.views)
for exactly the requests in vLLM's `waiting` queue and `running` list, updated by the
scheduler's hooks (arrival, admission, preemption, finish or abort), so one step costs the
former's own work plus O(running) to read the tokens generated. No vLLM import. A request
vLLM preempts keeps its output tokens (recompute preemption), so its view comes back as a new
prompt of prompt + kept tokens with the interval shifted by them. Tokens are read at the end of
a step (`read_progress`), while vLLM's requests are still in cache, and applied at the next.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from algorithms.decision import settle
from algorithms.protocols import BatchFormer
from algorithms.state import RunningSet, SchedulerState, WaitingQueue
from algorithms.types import LengthInterval, RequestId, WaitingRequest
from service.vllm_ext.views import interval_from_extra_args, shift_interval, view_prompt_tokens


class VllmRequest(Protocol):
    """The fields of `vllm.v1.request.Request` the mirror reads."""

    request_id: str
    arrival_time: float
    num_prompt_tokens: int
    max_tokens: int
    num_output_placeholders: int
    num_preemptions: int
    sampling_params: Any

    @property
    def num_output_tokens(self) -> int: ...


@dataclass(frozen=True, slots=True)
class Plan:
    """One step's decision in vLLM terms: preempt `evict`, then admit `admit` in this order."""

    evict: tuple[Any, ...]
    admit: tuple[Any, ...]
    forced: bool  # evictions the former did not choose (an overflow it cannot resolve itself)


class Mirror:
    """Waiting and running request views for `former`, with KV `capacity_tokens`."""

    def __init__(
        self,
        former: BatchFormer,
        capacity_tokens: int,
        block_size: int,
        max_batch_size: int,
        *,
        lag_steps: int = 0,
    ) -> None:
        """`lag_steps`: steps a finished request keeps its KV after its last token (1 with
        async scheduling: vLLM frees it when that token's output arrives, after the next
        step was scheduled). Views plan that much longer, so the lag never overflows."""
        self.former = former
        self.lag_steps = lag_steps
        self.capacity_tokens = capacity_tokens
        self.block_size = block_size
        self.max_batch_size = max_batch_size
        self.waiting = WaitingQueue(key=former.waiting_key)
        self.running = RunningSet(resume=True)  # vLLM keeps a preempted request's tokens
        self.step = 0
        self._ids: dict[str, RequestId] = {}
        self._requests: dict[RequestId, Any] = {}
        self._intervals: dict[RequestId, LengthInterval] = {}
        self._kept: dict[RequestId, int] = {}  # output tokens already in the view's prompt
        self._rows: list[Any] = []  # vLLM requests aligned with running.ids
        self._row_kept = np.zeros(0, dtype=np.int64)  # their kept tokens, aligned too
        # output + in-flight tokens of each row at the last read_progress(), aligned too
        self._row_produced = np.zeros(0, dtype=np.int64)
        self._progress_read = True  # False while rows admitted since the last read exist
        self._next_id = 0

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._ids

    def add(self, request: VllmRequest) -> str | None:
        """Track a request vLLM queued; or return why it cannot be (nothing is tracked then).

        The interval comes from `vllm_xargs` and is capped at what fits in an empty cache.
        """
        extra = getattr(request.sampling_params, "extra_args", None)
        interval, problem = interval_from_extra_args(extra, request.max_tokens)
        room = self.capacity_tokens - view_prompt_tokens(request.num_prompt_tokens, self.block_size)
        if problem is None and room < 1:
            problem = (
                f"a prompt of {request.num_prompt_tokens} tokens leaves no room in the KV cache "
                f"({self.capacity_tokens} tokens in {self.block_size}-token blocks)"
            )
        if problem is not None:
            return problem
        rid = self._next_id
        self._next_id += 1
        self._ids[request.request_id] = rid
        self._requests[rid] = request
        self._intervals[rid] = interval
        self._kept[rid] = 0
        self.waiting.add(self._view(rid, request))
        return None

    def forget(self, request_id: str) -> None:
        """The request left vLLM (finished, aborted, rejected)."""
        rid = self._ids.pop(request_id, None)
        if rid is None:
            return
        if rid in self.waiting:
            self.waiting.pop(rid)
        elif rid in self.running:
            self._drop_row(rid)
        del self._requests[rid], self._intervals[rid], self._kept[rid]

    def on_preempted(self, request: VllmRequest, kept_tokens: int) -> None:
        """vLLM preempted a running request that keeps `kept_tokens` output tokens."""
        rid = self._ids.get(request.request_id)
        if rid is None or rid not in self.running:
            return
        self._drop_row(rid)
        self._kept[rid] = kept_tokens
        self.waiting.add(self._view(rid, request))

    def on_admitted(self, requests: list[Any]) -> None:
        """vLLM moved these waiting requests (in this order) into `running`."""
        if not requests:
            return
        ids = [self._ids[r.request_id] for r in requests]
        views = [self.waiting.pop(rid) for rid in ids]
        self.running.admit(views, self.step, self.capacity_tokens)
        self._rows.extend(requests)
        kept = np.array([self._kept[rid] for rid in ids], dtype=np.int64)
        self._row_kept = np.concatenate((self._row_kept, kept))
        self._progress_read = False

    def read_progress(self) -> None:
        """Read the tokens each running request has produced or has in flight.

        The scheduler calls this at the end of `schedule()`, right after vLLM touched every
        running request. Between two schedule() calls vLLM's `update_from_output` only turns
        in-flight tokens into output tokens (the sum stays); finishes, aborts and preemptions
        drop rows through the hooks, so the next `refresh` sees what a fresh read would.
        """
        rows = self._rows
        self._row_produced = np.fromiter(
            (r.num_output_tokens + r.num_output_placeholders for r in rows),
            dtype=np.int64,
            count=len(rows),
        )
        self._progress_read = True

    def unread_progress(self) -> list[str]:
        """Running requests whose tokens now differ from the last read (a check for tests)."""
        if not self._progress_read:
            return [r.request_id for r in self._rows]
        return [
            r.request_id
            for r, produced in zip(self._rows, self._row_produced.tolist(), strict=True)
            if r.num_output_tokens + r.num_output_placeholders != produced
        ]

    def refresh(self) -> None:
        """Bring the running views up to date with the tokens read by `read_progress`."""
        running = self.running
        if not len(running):
            return
        if not self._progress_read:
            self.read_progress()
        running.set_generated(np.maximum(self._row_produced - self._row_kept, 0))

    def plan(self, now_s: float) -> Plan:
        """Ask the former; evictions and admissions as vLLM request objects.

        The decision is checked and fitted by the same code as `SchedulingLoop`'s
        (algorithms.decision), with resume preemption (vLLM's) and without raising on an
        overflow: inside vLLM the newest requests are preempted instead, as vLLM would.
        """
        state = SchedulerState(
            self.step,
            now_s,
            self.waiting,
            self.running,
            self.capacity_tokens,
            self.max_batch_size,
        )
        decision = self.former.form_batch(state)
        settled = settle(
            self.former,
            decision,
            self.waiting,
            self.running,
            self.capacity_tokens,
            max_batch_size=self.max_batch_size,
            strict=False,
        )
        return Plan(
            tuple(self._requests[i] for i in settled.evict),
            tuple(self._requests[i] for i in settled.admit),
            settled.forced,
        )

    def _view(self, rid: RequestId, request: VllmRequest) -> WaitingRequest:
        """Prompt + kept tokens as the prompt; what is left of the interval, plus the lag,
        capped at what fits in an empty cache."""
        kept = self._kept[rid]
        prompt = view_prompt_tokens(request.num_prompt_tokens + kept, self.block_size)
        left = shift_interval(self._intervals[rid], kept)
        room = max(1, self.capacity_tokens - prompt)
        hi = min(left.hi + self.lag_steps, room)
        return WaitingRequest(
            id=rid,
            arrival_s=request.arrival_time,
            prompt_tokens=prompt,
            interval=LengthInterval(min(left.lo + self.lag_steps, hi), hi),
            num_evictions=request.num_preemptions,
            max_tokens=max(1, request.max_tokens - kept) + self.lag_steps,
            resumed=kept,
        )

    def _drop_row(self, rid: RequestId) -> None:
        keep = self.running.ids != rid
        self.running.remove(keep)
        del self._rows[int(np.argmin(keep))]  # the first (only) False
        self._row_kept = self._row_kept[keep]
        if self._progress_read:  # otherwise it is read again before use
            self._row_produced = self._row_produced[keep]
