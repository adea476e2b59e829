"""A fake OpenAI-compatible upstream (vLLM-like) served for real by uvicorn, for the upstream tests.

`FakeUpstream` answers /v1/completions as vLLM streams it (one chunk per token, usage on every
chunk when `continuous_usage_stats` is asked, a usage-only chunk, `data: [DONE]`), /metrics with
vLLM's gauge names, and /v1/models. It can hold streams at a gate, hang, or answer an error
status, and records request bodies, the most streams open at once, and streams the client cut.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

UPSTREAM_MODEL = "upstream-model"


class FakeUpstream:
    def __init__(self, *, num_tokens: int = 3, delay_s: float = 0.005, usage: bool = True) -> None:
        self.num_tokens, self.delay_s, self.usage = num_tokens, delay_s, usage
        self.kv_usage, self.num_waiting = 0.0, 0
        self.status: int | None = None  # answer /v1/completions with this error status
        self.hang = False  # accept the request, then send nothing
        self.gate: asyncio.Event | None = None  # streams wait here before their first token
        self.bodies: list[dict[str, Any]] = []
        self.request_ids: list[str] = []
        self.cut: list[str] = []  # request ids whose stream the client closed early
        self.active = self.max_active = 0
        self.max_model_len: int | None = None  # reported on /v1/models when set (as vLLM does)
        self.app = self._build()

    def metrics_text(self) -> str:
        return (
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {self.kv_usage}\n'
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{engine="0",model_name="m"}} {self.num_waiting}\n'
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{engine="0",model_name="m"}} {self.active}\n'
        )

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/metrics")
        async def metrics() -> PlainTextResponse:
            return PlainTextResponse(self.metrics_text())

        @app.get("/v1/models")
        async def models() -> dict[str, Any]:
            card: dict[str, Any] = {"id": UPSTREAM_MODEL, "object": "model"}
            if self.max_model_len is not None:
                card["max_model_len"] = self.max_model_len
            return {"object": "list", "data": [card]}

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            body = await request.json()
            self.bodies.append(body)
            rid = request.headers.get("x-request-id", "")
            self.request_ids.append(rid)
            if self.status is not None:
                error = {"message": f"fake upstream error {self.status}", "type": "x"}
                return JSONResponse({"error": error}, status_code=self.status)
            return StreamingResponse(self._stream(body, rid), media_type="text/event-stream")

        return app

    async def _stream(self, body: dict[str, Any], rid: str) -> AsyncIterator[str]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        finished = False
        try:
            if self.hang:
                await asyncio.sleep(3600)
            if self.gate is not None:
                await self.gate.wait()
            async for line in self._chunks(body):
                yield line
            finished = True
        finally:
            self.active -= 1
            if not finished:
                self.cut.append(rid)

    async def _chunks(self, body: dict[str, Any]) -> AsyncIterator[str]:
        prompt = body["prompt"]
        num_prompt = len(prompt) if isinstance(prompt, list) else len(prompt.split())
        total = min(self.num_tokens, body["max_tokens"])
        last_reason = "length" if total == body["max_tokens"] else "stop"
        continuous = self.usage and body.get("stream_options", {}).get("continuous_usage_stats")
        for i in range(total):
            await asyncio.sleep(self.delay_s)
            reason = last_reason if i == total - 1 else None
            chunk: dict[str, Any] = {
                "id": "cmpl-up", "object": "text_completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "text": f" w{i}", "logprobs": None,
                             "finish_reason": reason}],
            }  # fmt: skip
            if continuous:
                chunk["usage"] = _usage(num_prompt, i + 1)
            yield f"data: {json.dumps(chunk)}\n\n"
        if self.usage:
            last = {"id": "cmpl-up", "object": "text_completion", "created": 0, "model": "m",
                    "choices": [], "usage": _usage(num_prompt, total)}  # fmt: skip
            yield f"data: {json.dumps(last)}\n\n"
        yield "data: [DONE]\n\n"


def _usage(num_prompt: int, num_output: int) -> dict[str, int]:
    return {"prompt_tokens": num_prompt, "completion_tokens": num_output,
            "total_tokens": num_prompt + num_output}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def running(app: Any) -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free local port inside this event loop; yield its URL."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="auto",
        timeout_graceful_shutdown=1,
    )  # fmt: skip
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # re-raise the start failure
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
