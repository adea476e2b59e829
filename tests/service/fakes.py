"""Test doubles for the gateway: a Backend, a Tokenizer and a predictor, plus client helpers.

`FakeBackend` answers each request with `num_tokens` tokens (" t0", " t1", ...; capped by
max_tokens, or exactly max_tokens with ignore_eos) after tiny sleeps, honours cancel, can hold
requests at a gate, fail, or end without a finish reason, and reports WorkerStats to the
Metrics it is given, as the real pool does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
from fastapi import FastAPI

from predictors.base import IntArray, PromptBatch
from service.http.app import create_app
from service.metrics import Metrics
from service.protocol import FinishReason, GenerationRequest, TokenEvent, WorkerStats
from service.settings import Settings

MODEL = "fake-model"


class FakeTokenizer:
    """One token per whitespace-separated word (id = word length); decode gives " t<id>"."""

    eos_token_id: int | None = None
    vocab_size: int = 1000

    def encode(self, text: str) -> list[int]:
        return [len(word) for word in text.split()]

    def decode(self, token_ids: list[int]) -> str:
        return "".join(f" t{i}" for i in token_ids)


class FakePredictor:
    """Always predicts [lo, hi] (capped by max_tokens); records the batches it saw."""

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = lo, hi
        self.batches: list[PromptBatch] = []

    def predict(self, batch: PromptBatch) -> tuple[IntArray, IntArray]:
        self.batches.append(batch)
        hi = np.minimum(self.hi, batch.max_tokens)
        return np.minimum(self.lo, hi), hi

    def refine(
        self, lo: IntArray, hi: IntArray, generated: IntArray, max_tokens: IntArray
    ) -> tuple[IntArray, IntArray]:
        return lo, hi


class FakeBackend:
    """Implements `service.protocol.Backend` in-process."""

    def __init__(
        self,
        *,
        num_tokens: int = 3,
        delay_s: float = 0.001,
        ready: bool = True,
        metrics: Metrics | None = None,
        fail_after: int | None = None,
        truncate: bool = False,
        worker_kv_tokens: int = 0,
        worker_max_model_len: int | None = None,
    ) -> None:
        self.num_tokens, self.delay_s, self.ready = num_tokens, delay_s, ready
        self.metrics, self.fail_after, self.truncate = metrics, fail_after, truncate
        self.worker_kv_tokens = worker_kv_tokens
        self.worker_max_model_len = worker_max_model_len
        self.gate: asyncio.Event | None = None
        self.requests: list[GenerationRequest] = []
        self.cancelled: list[str] = []
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self, grace_s: float) -> None:
        self.stopped = True

    def is_ready(self) -> bool:
        return self.started and not self.stopped and self.ready

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        self.requests.append(request)
        if self.gate is not None:
            await self.gate.wait()
        rid = request.request_id
        total = (
            request.max_tokens if request.ignore_eos else min(self.num_tokens, request.max_tokens)
        )
        reason: FinishReason = "length" if total == request.max_tokens else "stop"
        for i in range(total):
            await asyncio.sleep(self.delay_s)
            if rid in self.cancelled:
                yield TokenEvent(rid, finish_reason="abort", num_output_tokens=i)
                return
            if self.fail_after is not None and i == self.fail_after:
                yield TokenEvent(rid, finish_reason="error", error="worker 0 died")
                return
            if self.truncate and i == total - 1:
                return
            last = i == total - 1
            if last:  # report before the final event: the consumer stops reading after it
                self._report(len(request.prompt_token_ids), total)
            yield TokenEvent(
                rid, token_ids=(i,), text=f" t{i}", finish_reason=reason if last else None,
                num_prompt_tokens=len(request.prompt_token_ids), num_output_tokens=i + 1,
                first_scheduled_s=request.arrival_s + 0.001 if i == 0 else None,
            )  # fmt: skip

    def _report(self, prompt_tokens: int, generation_tokens: int) -> None:
        if self.metrics is not None:
            stats = WorkerStats(
                worker_id=0, num_running=1, num_waiting=2, kv_tokens=50, kv_capacity_tokens=200,
                iterations=generation_tokens, evictions=1, batch_formation_s=[2e-5],
                prompt_tokens=prompt_tokens, generation_tokens=generation_tokens,
                recomputed_tokens=prompt_tokens + 1,
            )  # fmt: skip
            self.metrics.observe_worker(stats, "fake-policy")

    def cancel(self, request_id: str) -> None:
        self.cancelled.append(request_id)

    def describe(self) -> dict[str, Any]:
        worker = {
            "worker_id": 0,
            "kv_capacity_tokens": self.worker_kv_tokens,
            "max_model_len": self.worker_max_model_len,
        }
        return {"policy": "fake-policy", "num_waiting": 0, "workers": [worker]}


def make_settings(**overrides: Any) -> Settings:
    fields: dict[str, Any] = {"served_model_name": MODEL, "predictor": "none"}
    fields.update(overrides)
    return Settings(**fields)


def make_app(
    backend: FakeBackend | None = None, predictor: FakePredictor | None = None, **overrides: Any
) -> tuple[FastAPI, FakeBackend]:
    settings = make_settings(**overrides)
    backend = backend if backend is not None else FakeBackend()
    backend.metrics = metrics = Metrics(settings.model_name)
    app = create_app(
        settings, backend=backend, tokenizer=FakeTokenizer(), predictor=predictor, metrics=metrics
    )
    return app, backend


@asynccontextmanager
async def serve(
    app: FastAPI, *, headers: dict[str, str] | None = None, raise_errors: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield an httpx client talking to it in-process."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_errors)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers
        ) as client:
            yield client


def parse_sse(body: str) -> list[Any]:
    """Events of an SSE body, checking the framing exactly: `data: ` + JSON + blank line.

    The last event must be `data: [DONE]`; it is returned as the string "[DONE]".
    """
    assert body.endswith("\n\n"), repr(body[-50:])
    events: list[Any] = []
    for raw in body[:-2].split("\n\n"):
        assert raw.startswith("data: ") and "\n" not in raw, repr(raw)
        payload = raw[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    return events
