"""A worker process: one engine and one `SchedulingLoop`, driven by the pool's messages (issue 4).

`worker_main` is the spawn target. The worker reads `Submit`/`Cancel`/`Shutdown` without
blocking while it has work, runs one loop iteration at a time and sends the iteration's
`TokenEvent`s, plus `WorkerStats` every STATS_INTERVAL_S. Invariants: every output token is
streamed exactly once (under resume preemption an evicted request keeps its tokens and goes on
after them; under restart preemption it regenerates them deterministically and the ones already
sent are skipped); every submitted request gets exactly one final event, or (on a prefill
worker, service.pool.roles) its first token and a `Prefilled` hand-over; an exception is reported as
`WorkerFailed` and re-raised, so the process exits non-zero.

KV hand-over: an engine with `export_kv` (hf) has a prefill worker attach the request's KV
cache to its `Prefilled` message; the pool forwards it in the decode worker's `Submit`, whose
engine installs it (`import_kv`) before the loop admits the request. A hand-over that arrives
without KV at such an engine (the prefill side could not export it) is prefilled here, counted
as recomputed.

Recomputed tokens (`WorkerStats.recomputed_tokens`): the prompt (+ kept output) tokens the loop
prefilled again for re-admitted evicted requests, plus prompt + output of a failover
resubmission (its first prefill here repeats the dead worker's work).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import time
import traceback
from typing import Any, Final, Protocol, cast

from algorithms import RequestRejectedError
from algorithms.loop import StepOutcome
from service.engines.base import Engine, Tokenizer
from service.pool.roles import role_settings, worker_role
from service.protocol import FinishReason, TokenEvent
from service.settings import Settings
from service.worker import ipc
from service.worker.counters import WorkerCounters
from service.worker.detok import IncrementalDetokenizer
from service.worker.engine_host import build_loop, load_engine, request_problem, waiting_request
from service.worker.overhead import HostOverhead
from service.worker.tracked import TrackedRequest
from service.worker.transit import Transit

STATS_INTERVAL_S: Final = 0.05
IDLE_POLL_S: Final = 0.1  # how long an idle worker blocks on its inbound queue at a time
STUCK_S: Final = 5.0  # waiting requests the policy will not start on an empty batch fail after this


class InboundQueue(Protocol):
    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...


class Sender(Protocol):
    def send(self, obj: Any) -> None: ...


class Worker:
    """Serves one worker slot until `Shutdown` or until the pool process is gone."""

    def __init__(
        self,
        settings: Settings,
        worker_id: int,
        inbound: InboundQueue,
        outbound: Sender,
        *,
        engine: tuple[Engine, Tokenizer] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.role = worker_role(settings, worker_id)
        self._prefill_only = self.role == "prefill"
        self._restart_on_eviction = settings.preemption == "restart"
        settings = role_settings(settings, self.role)
        self.engine, self.tokenizer = engine or load_engine(settings, worker_id)
        self.loop, self._executor = build_loop(
            settings, self.engine, prefill_only=self._prefill_only
        )
        self._inbound = inbound
        self._outbound = outbound
        self._by_request: dict[str, TrackedRequest] = {}
        self._by_loop: dict[int, TrackedRequest] = {}
        self._next_loop_id = 0
        self._outbox: list[TokenEvent] = []
        self._prefilled: list[ipc.Prefilled] = []
        self._transit = Transit()
        self._handover_delay_s = getattr(self.engine, "handover_delay_s", None)
        self._export_kv = getattr(self.engine, "export_kv", None)
        self._import_kv = getattr(self.engine, "import_kv", None)
        self._counters = WorkerCounters()
        self._dirty = True
        self._last_report_s = 0.0
        self._stuck_since: float | None = None
        self._host = HostOverhead()
        self._stopping = False
        self._parent_pid = os.getppid()

    def serve(self) -> None:
        """Announce readiness, then receive, step and report until told to stop."""
        engine = self.engine
        ready = ipc.WorkerReady(
            self.worker_id,
            os.getpid(),
            engine.name,
            engine.kv_capacity_tokens,
            engine.max_model_len,
        )
        self._outbound.send(ready)
        while not self._stopping:
            for tracked in self._transit.arrived(time.monotonic()):
                self._enqueue(tracked)
            block = not self.loop.has_work or self._stuck_since is not None
            if block or not len(self.loop.running):
                self._host.idle()  # the device is idle by choice, not waiting on the host
            self.receive(block=block)
            if self.loop.has_work and not self._stopping:
                self.step()
            self._flush()
            self._report(force=not self.loop.has_work and not len(self._transit))

    def receive(self, *, block: bool) -> None:
        """Handle every queued message; wait up to IDLE_POLL_S (or the next KV arrival) for the
        first one if `block`."""
        wait_s = self._transit.wait_s(time.monotonic())
        timeout_s = IDLE_POLL_S if wait_s is None else min(IDLE_POLL_S, wait_s)
        while not self._stopping:
            try:
                message = self._inbound.get(block, timeout_s if block else None)
            except queue.Empty:
                if block and os.getppid() != self._parent_pid:
                    self._stopping = True  # orphaned: the pool process is gone
                return
            self._handle(message)
            block = False

    def _handle(self, message: ipc.Inbound) -> None:
        """Act on one pool message; anything but an `ipc.Inbound` is a bug (TypeError)."""
        match message:
            case ipc.Submit():
                self._on_submit(message)
            case ipc.Cancel():
                self._on_cancel(message)
            case ipc.Shutdown():
                self._stopping = True
            case _:
                raise TypeError(f"no handler for message {type(message).__name__}")

    def step(self) -> StepOutcome:
        """One loop iteration; queue its token events."""
        now_s = time.time()
        started = time.perf_counter()
        self._counters.host_overhead_s += self._host.before_step(started)
        outcome = self.loop.step(now_s)
        self._host.after_step(outcome.elapsed_s)
        formation_s = time.perf_counter() - started - self._executor.last_execute_s
        self._counters.batch_formation_s.append(max(0.0, formation_s))
        self._counters.iterations += 1
        self._dirty = True
        self._apply(outcome, now_s)
        self._check_stuck(outcome)
        return outcome

    def _apply(self, outcome: StepOutcome, now_s: float) -> None:
        counters = self._counters
        counters.recomputed_tokens += outcome.recomputed_tokens
        for loop_id in outcome.admitted:
            tracked = self._by_loop[loop_id]
            if tracked.first_scheduled_s is None:
                tracked.first_scheduled_s = now_s
                request = tracked.request
                num_context = len(request.prompt_token_ids) + request.output_offset
                if request.recompute:  # a failover resubmission: prefilled again here
                    counters.recomputed_tokens += num_context
                elif request.output_offset:  # its KV arrives from a prefill worker
                    counters.handover_tokens += num_context
                else:
                    counters.prompt_tokens += len(request.prompt_token_ids)
        for loop_id in outcome.evicted:
            tracked = self._by_loop[loop_id]
            tracked.num_evictions += 1
            if self._restart_on_eviction:  # its output is regenerated from scratch
                tracked.run_tokens = 0
            counters.evictions += 1
            if loop_id not in self.loop.running:  # re-admitted in the same step: it runs again
                self.engine.release(loop_id, forget=False)
        finished = set(outcome.finished)
        for loop_id, token_id in outcome.tokens.items():
            self._on_token(self._by_loop[loop_id], token_id, loop_id in finished, outcome)
        for loop_id in outcome.rejected:
            reason = "after an eviction its refined output length no longer fits the KV cache"
            self._finish(self._by_loop[loop_id], "error", f"request rejected: {reason}")

    def _on_token(
        self, tracked: TrackedRequest, token_id: int, is_last: bool, outcome: StepOutcome
    ) -> None:
        """Stream one produced token; a last one ends the request with the engine's reason
        (`outcome.finish_reasons`) or, on a prefill worker, hands it over."""
        tracked.run_tokens += 1
        tokens: tuple[int, ...] = ()
        text = ""
        if tracked.run_tokens > tracked.num_sent:  # a restarted run skips what was streamed
            tracked.num_sent += 1
            self._counters.generation_tokens += 1
            tokens = (token_id,)
            text = tracked.detok.add(token_id)
        if is_last and tracked.loop_id in self._executor.handed_over:
            if tokens:
                self._outbox.append(tracked.event(tokens, text))
            output = tracked.request.output_token_ids + (token_id,)
            kv = None if self._export_kv is None else self._export_kv(tracked.loop_id)
            self._prefilled.append(ipc.Prefilled(tracked.request.request_id, output, kv))
            self._forget(tracked)
        elif is_last:
            reason = cast(FinishReason, outcome.finish_reasons[tracked.loop_id])
            self._finish(tracked, reason, None, tokens, text)
        elif tokens:
            self._outbox.append(tracked.event(tokens, text))

    def _finish(
        self,
        tracked: TrackedRequest,
        reason: FinishReason,
        error: str | None,
        tokens: tuple[int, ...] = (),
        text: str = "",
    ) -> None:
        self._forget(tracked)
        self._outbox.append(tracked.event(tokens, text, reason, error))

    def _forget(self, tracked: TrackedRequest) -> None:
        if tracked.in_engine:
            self.engine.release(tracked.loop_id, forget=True)
        del self._by_request[tracked.request.request_id]
        del self._by_loop[tracked.loop_id]
        self._dirty = True

    def _check_stuck(self, outcome: StepOutcome) -> None:
        """Fail waiting requests the policy keeps refusing to start on an empty batch."""
        if outcome.batch_size or outcome.evicted or not len(self.loop.waiting):
            self._stuck_since = None
            return
        now = time.monotonic()
        if self._stuck_since is None:
            self._stuck_since = now
        elif now - self._stuck_since > STUCK_S:
            reason = f"policy {self.loop.former.name} started nothing on an idle worker"
            for request in list(self.loop.waiting):
                self.loop.abort(request.id)
                self._finish(self._by_loop[request.id], "error", f"request rejected: {reason}")
            self._stuck_since = None

    def _on_submit(self, message: ipc.Submit) -> None:
        request = message.request
        handover = request.output_offset and not request.recompute
        if handover and message.kv is None and self._import_kv is not None:
            request = dataclasses.replace(request, recompute=True)  # no KV came: prefill here
        if request.request_id in self._by_request:
            error = f"duplicate request id {request.request_id!r}"
            self._outbox.append(TokenEvent(request.request_id, finish_reason="error", error=error))
            return
        loop_id, self._next_loop_id = self._next_loop_id, self._next_loop_id + 1
        detok = IncrementalDetokenizer(
            self.tokenizer, request.prompt_token_ids, request.output_token_ids
        )
        tracked = TrackedRequest(request, loop_id, detok)
        self._by_request[request.request_id] = tracked
        self._by_loop[loop_id] = tracked
        problem = request_problem(request, self.engine)
        if problem is None and self._prefill_only and request.output_offset:
            problem = "a prefill worker takes no handed-over request"
        if problem is not None:
            self._finish(tracked, "error", f"request rejected: {problem}")
            return
        self.engine.add(loop_id, request)
        tracked.in_engine = True
        handover = request.output_offset and not request.recompute
        if handover and message.kv is not None and self._import_kv is not None:
            try:
                import_s = self._import_kv(loop_id, message.kv)
            except ValueError as exc:
                self._finish(tracked, "error", f"request rejected: {exc}")
                return
            counters = self._counters
            counters.handover_bytes += message.kv.nbytes
            counters.handover_s.append(max(0.0, time.time() - message.kv.started_s))
            counters.handover_copy_s += message.kv.export_s + import_s
        if handover and self._handover_delay_s is not None:  # KV on its way here
            num_kv = len(request.prompt_token_ids) + request.output_offset
            self._transit.send(tracked, self._handover_delay_s(num_kv), time.monotonic())
            return
        self._enqueue(tracked)

    def _enqueue(self, tracked: TrackedRequest) -> None:
        waiting = waiting_request(tracked.request, tracked.loop_id, prefill_only=self._prefill_only)
        try:
            self.loop.add_request(waiting)
        except RequestRejectedError as exc:
            self._finish(tracked, "error", f"request rejected: {exc}")
        self._dirty = True

    def _on_cancel(self, message: ipc.Cancel) -> None:
        tracked = self._by_request.get(message.request_id)
        if tracked is not None:  # else it already finished
            self._transit.drop(tracked)
            self.loop.abort(tracked.loop_id)
            self._finish(tracked, "abort", None)

    def _flush(self) -> None:
        if self._outbox or self._prefilled:
            prefilled = tuple(self._prefilled)
            self._outbound.send(ipc.Events(self.worker_id, tuple(self._outbox), prefilled))
            self._outbox = []
            self._prefilled = []

    def _report(self, *, force: bool) -> None:
        now = time.monotonic()
        heartbeat = len(self._transit) > 0  # KV on its way: silence would read as a hang
        if not (self._dirty or heartbeat) or (
            not force and now - self._last_report_s < STATS_INTERVAL_S
        ):
            return
        loop = self.loop
        stats = self._counters.stats(
            self.worker_id,
            len(loop.running),
            len(loop.waiting) + len(self._transit),
            loop.running.kv_tokens,
            loop.kv_capacity_tokens,
        )
        self._outbound.send(ipc.Stats(stats))
        self._counters = WorkerCounters()
        self._dirty = False
        self._last_report_s = now


def worker_main(
    settings: Settings, worker_id: int, inbound: InboundQueue, outbound: Sender
) -> None:
    """Spawn target. Ctrl-C and SIGTERM are the pool's to handle: it sends `Shutdown`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        Worker(settings, worker_id, inbound, outbound).serve()
    except BaseException as exc:
        line = (str(exc).splitlines() or [""])[0]
        outbound.send(
            ipc.WorkerFailed(worker_id, f"{type(exc).__name__}: {line}", traceback.format_exc())
        )
        raise
