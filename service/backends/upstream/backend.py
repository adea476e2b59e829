"""`UpstreamBackend`: the `openai-upstream` engine's Backend (docs/serving-upstream.md).

Requests wait at the gateway; the policy's batch former decides which one is sent to which
upstream (`UpstreamScheduler`: the former planned against each upstream's KV, the least-loaded
upstream asked first), as a streaming /v1/completions call whose chunks become TokenEvents.
A background task reads every upstream's /metrics each `upstream_probe_interval_s`.
Invariant: every accepted request gets exactly one final event (an "error" one carries the HTTP
status), and none waits forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Final

import httpx

from algorithms import make_batch_former, refuse_clairvoyant
from service.backends.upstream.flight import Flight
from service.backends.upstream.forward import (
    UpstreamError,
    completion_body,
    finish_reason_of,
    stream_chunks,
)
from service.backends.upstream.probe import Prober
from service.backends.upstream.scheduler import UpstreamScheduler
from service.backends.upstream.state import Upstream
from service.engines.base import Tokenizer
from service.metrics import Metrics
from service.protocol import GenerationRequest, TokenEvent
from service.settings import Settings

CONNECT_TIMEOUT_S: Final = 5.0
DEFAULT_MAX_IN_FLIGHT: Final = 256  # per upstream while its capacity is unknown
logger = logging.getLogger("kvsched.upstream")


class UpstreamBackend:
    """Implements `service.protocol.Backend` over OpenAI-compatible upstream servers.

    `send_token_ids`: forward prompt token ids (the gateway's tokenizer is the upstream
    model's) instead of the decoded text; default: when `settings.tokenizer` is set.
    `transport`: an httpx transport for tests. `metrics`: see
    `service.backends.upstream.probe.Prober`.
    """

    def __init__(
        self,
        settings: Settings,
        tokenizer: Tokenizer,
        *,
        send_token_ids: bool | None = None,
        metrics: Metrics | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        refuse_clairvoyant(settings.policy)
        if not settings.upstream:
            raise ValueError("engine 'openai-upstream' needs at least one --upstream URL")
        self.settings, self.tokenizer, self.metrics = settings, tokenizer, metrics
        self.send_token_ids = settings.tokenizer is not None if send_token_ids is None else (
            send_token_ids
        )  # fmt: skip
        in_flight = settings.max_batch_size or DEFAULT_MAX_IN_FLIGHT
        self.upstreams = [
            Upstream(i, url, settings.upstream_kv_tokens, in_flight)
            for i, url in enumerate(settings.upstream)
        ]
        former = make_batch_former(settings.policy, **settings.policy_params)
        self._scheduler = UpstreamScheduler(former, self.upstreams)
        self._flights: dict[str, Flight] = {}
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._prober: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._accepting = False

    async def start(self) -> None:
        """Open the HTTP client and read every upstream once (unreachable ones: not ready)."""
        timeout_s = self.settings.upstream_timeout_s
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            transport=self._transport,
            trust_env=False,  # upstreams are internal servers: no proxies from the environment
        )
        prober = Prober(self.upstreams, self._client, self.settings, self.metrics, self._dispatch)
        await prober.probe_all()
        self._prober = asyncio.create_task(prober.run())
        self._idle.set()
        self._accepting = True

    async def stop(self, grace_s: float) -> None:
        """Stop accepting; wait up to `grace_s` for in-flight requests, fail the rest (503)."""
        self._accepting = False
        if self._flights:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        tasks = [f.task for f in self._flights.values() if f.task is not None]
        for flight in list(self._flights.values()):
            message = f"the server shut down before the request finished ({grace_s:g} s grace)"
            self._fail(flight, 503, message)
        if self._prober is not None:
            tasks.append(self._prober)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    def is_ready(self) -> bool:
        return self._accepting and any(u.reachable for u in self.upstreams)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream the request's events; closing the stream early cancels the upstream call."""
        flight = self._accept(request)
        if isinstance(flight, TokenEvent):
            yield flight
            return
        try:
            while True:
                event = await flight.events.get()
                yield event
                if event.finish_reason is not None:
                    return
        finally:
            if not flight.done:
                self.cancel(request.request_id)

    def cancel(self, request_id: str) -> None:
        flight = self._flights.get(request_id)
        if flight is None:
            return
        event = TokenEvent(request_id, finish_reason="abort", num_output_tokens=flight.num_tokens)
        self._finish(flight, event)
        if flight.task is not None:
            flight.task.cancel()  # leaves the queue, or closes the upstream connection

    def describe(self) -> dict[str, Any]:
        return {
            "policy": self.settings.policy,
            "engine": "openai-upstream",
            "admission": "batch former at the gateway; upstreams preempt by themselves",
            "prompt_format": "token_ids" if self.send_token_ids else "text",
            "ready": self.is_ready(),
            "accepting": self._accepting,
            "num_requests": len(self._flights),
            "num_waiting": len(self._scheduler),
            "upstreams": [u.describe() for u in self.upstreams],
            "workers": [  # what the gateway reads to cap prompt + max_tokens
                {
                    "worker_id": u.index,
                    "kv_capacity_tokens": u.configured_capacity,
                    "max_model_len": u.max_model_len,
                }
                for u in self.upstreams
                if u.configured_capacity is not None or u.max_model_len is not None
            ],
        }

    def _accept(self, request: GenerationRequest) -> Flight | TokenEvent:
        rid = request.request_id
        if not self._accepting:
            status, reason = 503, "the server is not accepting requests (starting or stopping)"
        elif rid in self._flights:
            status, reason = 400, f"duplicate request id {rid!r}"
        elif not any(u.reachable for u in self.upstreams):
            status, reason = 503, self._unreachable_message()
        else:
            flight = self._flights[rid] = Flight(request)
            self._idle.clear()
            flight.task = asyncio.create_task(self._run(flight), name=f"upstream-{rid}")
            return flight
        return TokenEvent(rid, finish_reason="error", error=reason, http_status=status)

    async def _run(self, flight: Flight) -> None:
        try:
            await self._attempts(flight)
        except UpstreamError as exc:
            self._fail(flight, exc.status, str(exc))
        except asyncio.CancelledError:
            self._finish(flight, TokenEvent(flight.request.request_id, finish_reason="abort"))
            raise
        except Exception as exc:  # a bug here must still end the request, not hang it
            logger.exception("request %s failed", flight.request.request_id)
            self._fail(flight, 500, f"internal error forwarding the request: {exc!r}")

    async def _attempts(self, flight: Flight) -> None:
        """Admit and forward; a request never sent (connect failed) tries another upstream."""
        for attempt in itertools.count(1):
            upstream = await self._admission(flight)
            try:
                await self._forward(flight, upstream)
                upstream.num_served += 1
                return
            except UpstreamError as exc:
                upstream.num_failed += 1
                if exc.retryable:
                    upstream.mark_down(str(exc))
                if not exc.retryable or flight.num_tokens or attempt >= len(self.upstreams):
                    raise
                logger.warning("%s; trying another upstream", exc)
            finally:
                prompt_tokens = len(flight.request.prompt_token_ids)
                upstream.release(flight.weight_tokens, prompt_tokens + flight.num_tokens)
                self._scheduler.remove(flight.request.request_id)
                self._dispatch()

    async def _admission(self, flight: Flight) -> Upstream:
        """Wait in the queue until `_dispatch` assigns an upstream (UpstreamError if none)."""
        if not any(u.reachable for u in self.upstreams):
            raise UpstreamError(503, self._unreachable_message())
        flight.admitted = asyncio.get_running_loop().create_future()
        self._scheduler.queue(flight)
        self._dispatch()
        try:
            return await flight.admitted
        except asyncio.CancelledError:  # cancelled just after `_dispatch` admitted it
            admitted = flight.admitted
            if admitted.done() and not admitted.cancelled() and admitted.exception() is None:
                prompt_tokens = len(flight.request.prompt_token_ids)
                admitted.result().release(flight.weight_tokens, prompt_tokens)
                self._scheduler.remove(flight.request.request_id)
                self._dispatch()
            raise
        finally:
            if self._scheduler.is_waiting(flight.request.request_id):
                self._scheduler.remove(flight.request.request_id)

    def _dispatch(self) -> None:
        """Send waiting requests where the batch former admits them (`UpstreamScheduler`)."""
        if not any(u.reachable for u in self.upstreams):
            for flight in self._scheduler.waiting_flights():
                self._scheduler.remove(flight.request.request_id)
                if flight.admitted is not None and not flight.admitted.done():
                    flight.admitted.set_exception(UpstreamError(503, self._unreachable_message()))
            return
        for flight, upstream in self._scheduler.dispatch(time.time()):
            if flight.admitted is None or flight.admitted.done():  # cancelled meanwhile
                self._scheduler.remove(flight.request.request_id)
                upstream.release(flight.weight_tokens, len(flight.request.prompt_token_ids))
                continue
            flight.admitted_s = time.time()
            flight.admitted.set_result(upstream)

    async def _forward(self, flight: Flight, upstream: Upstream) -> None:
        """Stream the request from `upstream`; the final event goes out after `[DONE]`."""
        assert self._client is not None
        request, rid = flight.request, flight.request.request_id
        ids = list(request.prompt_token_ids)
        prompt: str | list[int] = ids if self.send_token_ids else self.tokenizer.decode(ids)
        body = completion_body(request, prompt, upstream.model)
        num_prompt, reason, first_s = len(ids), None, flight.admitted_s
        async for chunk in stream_chunks(self._client, upstream.url, body, rid):
            num_prompt = chunk.num_prompt_tokens or num_prompt
            counted = chunk.num_output_tokens
            total = flight.num_tokens + bool(chunk.text) if counted is None else counted
            upstream.generated(max(0, total - flight.num_tokens))
            flight.num_tokens = max(total, flight.num_tokens)
            if chunk.text:
                self._emit(flight, TokenEvent(rid, text=chunk.text, num_prompt_tokens=num_prompt,
                                              num_output_tokens=flight.num_tokens,
                                              first_scheduled_s=first_s))  # fmt: skip
                first_s = None
            reason = chunk.finish_reason or reason
        finish = finish_reason_of(upstream.url, reason)
        self._finish(flight, TokenEvent(rid, finish_reason=finish, num_prompt_tokens=num_prompt,
                                        num_output_tokens=flight.num_tokens,
                                        first_scheduled_s=first_s))  # fmt: skip

    def _emit(self, flight: Flight, event: TokenEvent) -> None:
        if not flight.done:
            flight.events.put_nowait(event)

    def _finish(self, flight: Flight, event: TokenEvent) -> None:
        """Deliver the final event (once) and forget the request."""
        if flight.done:
            return
        flight.done = True
        flight.events.put_nowait(event)
        rid = flight.request.request_id
        self._scheduler.remove(rid)
        if self._flights.get(rid) is flight:
            del self._flights[rid]
        if not self._flights:
            self._idle.set()

    def _fail(self, flight: Flight, status: int, message: str) -> None:
        request = flight.request
        self._finish(flight, TokenEvent(request.request_id, finish_reason="error", error=message,
                                        num_prompt_tokens=len(request.prompt_token_ids),
                                        num_output_tokens=flight.num_tokens,
                                        http_status=status))  # fmt: skip

    def _unreachable_message(self) -> str:
        why = "; ".join(f"{u.url}: {u.last_error or 'not probed yet'}" for u in self.upstreams)
        return f"no upstream is reachable ({why})"
