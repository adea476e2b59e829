"""`WorkerPool`: the default `Backend`, N spawned worker processes behind one asyncio front.

Each request goes to the live worker with the least projected KV load (sum of prompt + hi over
its unfinished requests) and its events come back on a per-request asyncio queue. A worker that
dies (or hangs and is killed) is restarted, and each request it held moves on to a live worker
(lossless failover): one that streamed nothing is re-submitted as it was; one that streamed k
tokens is re-submitted with them (`output_token_ids`, `recompute`), so the new worker prefills
prompt + k tokens itself and continues with token k + 1: the client's stream goes on with no
error, no token twice and none missing (decoding is deterministic). A request fails only once
it was on more than `settings.max_resubmits` dying workers, saying so. With worker roles
(service.pool.roles) a request goes to a prefill worker first, then with its first token to a decode
worker; a failover of a request that streamed beyond that token goes to a decode worker. A
hand-over's KV cache (hf engine) passes through here once, from the prefill worker's pipe into
the decode worker's queue; the pool keeps no copy, so if that decode worker dies the request
resumes from its streamed tokens with recompute like any other.
Invariant: every accepted request gets exactly one final event; none hangs or vanishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import time
from collections.abc import AsyncIterator
from typing import Any, Final

from algorithms import make_batch_former, refuse_clairvoyant
from service.metrics import Metrics
from service.pool.processes import (
    OutboundReader,
    PendingRequest,
    WorkerProcess,
    WorkerSlot,
    describe_slots,
    kill_stalled_workers,
    shutdown_workers,
    spawn_worker,
    threadsafe,
)
from service.pool.roles import RoleMetrics, first_role, pick_slot, worker_role
from service.protocol import GenerationRequest, TokenEvent
from service.settings import Settings
from service.worker import ipc

MAX_START_FAILURES: Final = 5  # a slot whose worker dies this often before ready is given up

logger = logging.getLogger(__name__)


class WorkerPool:
    """Implements `Backend`. `metrics.observe_worker(stats, policy)` gets every worker report."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        refuse_clairvoyant(settings.policy)
        make_batch_former(settings.policy, **settings.policy_params)  # fail fast on bad params
        self.settings = settings
        self.metrics = metrics
        self._ctx = multiprocessing.get_context("spawn")
        self._slots = [WorkerSlot(i, worker_role(settings, i)) for i in range(settings.workers)]
        self._role_metrics = RoleMetrics(metrics, self._slots)
        self._pending: dict[str, PendingRequest] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reader: OutboundReader | None = None
        self._started: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()
        self._accepting = False
        self._closing = False
        self._watchdog: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Spawn the workers and wait until each reports ready (raise if one fails to start)."""
        if self._loop is not None:
            raise RuntimeError("the worker pool was already started")
        self._loop = asyncio.get_running_loop()
        self._started = self._loop.create_future()
        for slot in self._slots:
            slot.proc = spawn_worker(self._ctx, self.settings, slot.worker_id)
        self._reader = OutboundReader(
            self._live,
            threadsafe(self._loop, self._on_message),
            threadsafe(self._loop, self._on_exit),
        )
        self._reader.start()
        try:
            await self._started
        except BaseException:
            await self._shutdown_workers()
            raise
        self._idle.set()
        self._accepting = True
        timeout_s = self.settings.worker_stall_timeout_s
        self._watchdog = asyncio.create_task(kill_stalled_workers(self._slots, timeout_s))

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; wait up to `grace_s` for in-flight requests, fail the rest, shut down."""
        if self._loop is None or self._closing:
            return
        self._accepting = False
        if self._pending:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        self._closing = True
        for pending in list(self._pending.values()):
            self._fail(
                pending, f"the server shut down before the request finished ({grace_s:g} s grace)"
            )
        await self._shutdown_workers()

    def is_ready(self) -> bool:
        return self._accepting and all(slot.ready is not None for slot in self._slots)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream the request's events; closing the stream early cancels the request."""
        pending = self._accept(request)
        if isinstance(pending, TokenEvent):
            yield pending
            return
        try:
            while True:
                event = await pending.events.get()
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            if self._pending.get(request.request_id) is pending:
                self.cancel(request.request_id)

    def cancel(self, request_id: str) -> None:
        pending = self._pending.get(request_id)
        if pending is None:
            return
        if pending.slot is not None and pending.slot.proc is not None:
            pending.slot.proc.send(ipc.Cancel(request_id))
        self._end(pending, TokenEvent(request_id, finish_reason="abort"))

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.settings.policy,
            "engine": self.settings.engine,
            "ready": self.is_ready(),
            "accepting": self._accepting,
            "num_requests": len(self._pending),
            "prefill_workers": self.settings.prefill_workers,
            "preemption": self.settings.preemption,
            **describe_slots(self._slots),
        }

    def _accept(self, request: GenerationRequest) -> PendingRequest | TokenEvent:
        if not self._accepting:
            reason = "the server is not accepting requests (starting or shutting down)"
        elif request.request_id in self._pending:
            reason = f"duplicate request id {request.request_id!r}"
        else:
            pending = PendingRequest(request, first_role(self.settings))
            self._pending[request.request_id] = pending
            self._idle.clear()
            self._assign(pending)
            return pending
        return TokenEvent(request.request_id, finish_reason="error", error=reason)

    def _assign(self, pending: PendingRequest) -> None:
        """Send the request to the live worker of its stage with the least projected KV load."""
        slot = pick_slot(self._slots, pending.stage)
        if slot is None:
            role = "" if pending.stage == "mixed" else f"{pending.stage} "
            self._fail(pending, f"no {role}worker is running")
            return
        pending.slot = slot
        if slot.num_assigned == 0:  # an idle worker's silence so far is not a stall
            slot.last_heard_s = time.monotonic()
        slot.load_tokens += pending.weight
        slot.num_assigned += 1
        assert slot.proc is not None
        slot.proc.send(ipc.Submit(pending.stage_request(), pending.take_kv()))

    def _unassign(self, pending: PendingRequest) -> None:
        if pending.slot is not None:
            pending.slot.load_tokens -= pending.weight
            pending.slot.num_assigned -= 1
            pending.slot = None

    def _end(self, pending: PendingRequest, event: TokenEvent) -> None:
        """Deliver the final event and forget the request."""
        del self._pending[pending.request.request_id]
        self._unassign(pending)
        if not self._pending:
            self._idle.set()
        pending.events.put_nowait(event)

    def _fail(self, pending: PendingRequest, message: str) -> None:
        request, num_output = pending.request, pending.num_tokens
        num_prompt = len(request.prompt_token_ids)
        event = TokenEvent(request.request_id, (), "", "error", message, num_prompt, num_output)
        self._end(pending, event)

    def _live(self) -> list[WorkerProcess]:
        return [slot.proc for slot in self._slots if slot.proc is not None]

    def _on_message(self, proc: WorkerProcess, message: ipc.Outbound) -> None:
        if self._slots[proc.worker_id].proc is proc:  # else a replaced worker's leftovers
            self._slots[proc.worker_id].last_heard_s = time.monotonic()
            match message:
                case ipc.WorkerReady():
                    self._on_ready(message)
                case ipc.Events():
                    self._on_events(message)
                case ipc.Stats():
                    self._on_stats(message)
                case ipc.WorkerFailed():
                    self._on_failed(message)
                case _:
                    raise TypeError(f"unexpected message {type(message).__name__}")

    def _on_ready(self, message: ipc.WorkerReady) -> None:
        slot = self._slots[message.worker_id]
        slot.ready = message
        slot.start_failures = 0
        started = self._started
        all_ready = all(s.ready is not None for s in self._slots)
        if started is not None and not started.done() and all_ready:
            started.set_result(None)

    def _on_events(self, message: ipc.Events) -> None:
        slot = self._slots[message.worker_id]
        for event in message.events:
            pending = self._pending.get(event.request_id)
            if pending is None or pending.slot is not slot:
                continue  # cancelled or failed here already
            pending.tokens.extend(event.token_ids)
            if event.finish_reason is not None:
                self._end(pending, event)
            else:
                pending.events.put_nowait(event)
        for prefilled in message.prefilled:
            pending = self._pending.get(prefilled.request_id)
            if pending is not None and pending.slot is slot:
                self._unassign(pending)  # the prefill worker released it: on to a decode worker
                pending.stage = "decode"
                pending.handed_tokens = prefilled.token_ids
                pending.kv = prefilled.kv
                self._assign(pending)

    def _on_stats(self, message: ipc.Stats) -> None:
        self._slots[message.stats.worker_id].stats = message.stats
        self._role_metrics.observe(message.stats)
        if self.metrics is not None:
            self.metrics.observe_worker(message.stats, self.settings.policy)

    def _on_failed(self, message: ipc.WorkerFailed) -> None:
        self._slots[message.worker_id].last_error = message.error
        logger.error("worker %d: %s\n%s", message.worker_id, message.error, message.traceback)

    def _on_exit(self, proc: WorkerProcess) -> None:
        """Restart the worker's slot; re-submit or fail the requests it held."""
        slot = self._slots[proc.worker_id]
        if slot.proc is not proc:
            return
        proc.discard()
        code = proc.process.exitcode
        why = f"worker {slot.worker_id} exited (exit code {code})"
        if slot.last_error:
            why += f": {slot.last_error}"
        slot.start_failures = 0 if slot.ready is not None else slot.start_failures + 1
        slot.ready = None
        slot.stats = None
        slot.proc = None
        if self.metrics is not None:
            self.metrics.forget_worker(slot.worker_id)
        if self._started is not None and not self._started.done():
            self._started.set_exception(RuntimeError(f"{why} before it was ready"))
            return
        if not self._closing:
            self._restart(slot, why)
        for pending in [p for p in self._pending.values() if p.slot is slot]:
            self._reroute(pending, why)

    def _restart(self, slot: WorkerSlot, why: str) -> None:
        if slot.start_failures >= MAX_START_FAILURES:
            logger.error("%s; giving up on it after %d failed starts", why, slot.start_failures)
            return
        logger.warning("%s; restarting it", why)
        slot.restarts += 1
        slot.last_error = None
        try:
            slot.proc = spawn_worker(self._ctx, self.settings, slot.worker_id)
        except OSError as exc:  # out of processes or descriptors: the slot stays empty
            logger.error("cannot restart worker %d: %s", slot.worker_id, exc)

    def _reroute(self, pending: PendingRequest, why: str) -> None:
        """A worker died holding `pending`: re-submit it, to go on from the tokens it streamed
        (if any), unless it used up its resubmissions or the pool is shutting down."""
        budget = self.settings.max_resubmits
        if self._closing:
            self._fail(pending, f"{why}; the server is shutting down")
        elif pending.num_resubmits >= budget:
            self._fail(
                pending,
                f"{why}; the request was on {pending.num_resubmits + 1} failed workers, and"
                f" {budget} resubmissions are allowed (--max-resubmits)",
            )
        else:
            self._unassign(pending)
            pending.num_resubmits += 1
            pending.resume("decode" if self.settings.prefill_workers else "mixed")
            if self.metrics is not None:
                self.metrics.observe_resubmission()
            logger.debug(
                "request %s: resubmitted after %d streamed tokens (%s)",
                pending.request.request_id,
                pending.num_tokens,
                why,
            )
            self._assign(pending)

    async def _shutdown_workers(self) -> None:
        """Ask every worker to exit, wait (off the event loop), kill stragglers, stop the reader."""
        self._closing = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        await shutdown_workers(self._slots, self._reader)
