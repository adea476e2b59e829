"""A client that leaves mid-request gets its request cancelled on the backend (raw ASGI calls).

httpx's ASGI transport cannot hang up early, so these tests drive the app with hand-made
`receive`/`send` callables: ASGI spec 2.3 servers report the hang-up as `http.disconnect`,
2.4 servers by raising OSError from `send` (Starlette turns it into ClientDisconnect).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fastapi import FastAPI

from tests.service.fakes import MODEL, FakeBackend, make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def http_scope(path: str, body: bytes, spec_version: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }


class HangingUpClient:
    """Sends the body, then hangs up after `after_chunks` body chunks (or `after_s` seconds)."""

    def __init__(self, body: bytes, *, after_chunks: int = 2, after_s: float | None = None,
                 raise_on_send: bool = False) -> None:  # fmt: skip
        self.body, self.after_chunks, self.after_s = body, after_chunks, after_s
        self.raise_on_send = raise_on_send
        self.chunks: list[bytes] = []
        self.statuses: list[int] = []
        self.gone = asyncio.Event()
        self._sent_body = False

    async def receive(self) -> dict[str, Any]:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        if self.after_s is not None:
            await asyncio.sleep(self.after_s)
            self.gone.set()
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.gone.is_set() and self.raise_on_send:
            raise OSError("connection reset by peer")
        if message["type"] == "http.response.start":
            self.statuses.append(message["status"])
        elif message.get("body"):
            self.chunks.append(message["body"])
            if len(self.chunks) >= self.after_chunks:
                self.gone.set()


async def call(app: FastAPI, path: str, client: HangingUpClient, spec: str = "2.3") -> None:
    async with app.router.lifespan_context(app):
        scope = http_scope(path, client.body, spec)
        await asyncio.wait_for(app(scope, client.receive, client.send), timeout=5.0)


def payload(**extra: Any) -> bytes:
    base = {"model": MODEL, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 5000}
    return json.dumps({**base, **extra}).encode()


@pytest.mark.parametrize(("spec", "raise_on_send"), [("2.3", False), ("2.4", True)])
async def test_disconnect_mid_stream_cancels_the_request(spec: str, raise_on_send: bool) -> None:
    app, backend = make_app(FakeBackend(num_tokens=5000, delay_s=0.002))
    client = HangingUpClient(payload(stream=True), after_chunks=3, raise_on_send=raise_on_send)
    await call(app, "/v1/chat/completions", client, spec)
    assert client.statuses == [200]
    assert backend.cancelled == [backend.requests[0].request_id]
    assert len(client.chunks) < 50  # it stopped early, not after 5000 tokens
    assert app.state.gateway.in_flight == 0
    assert b'finished_reason="abort"' in _abort_line(app)


async def test_disconnect_while_waiting_for_a_whole_response_cancels() -> None:
    app, backend = make_app(FakeBackend(num_tokens=5000, delay_s=0.002))
    client = HangingUpClient(payload(), after_s=0.05)
    await call(app, "/v1/chat/completions", client)
    assert backend.cancelled == [backend.requests[0].request_id]
    assert client.statuses == [] and app.state.gateway.in_flight == 0


async def test_finished_requests_are_not_cancelled() -> None:
    app, backend = make_app(FakeBackend(num_tokens=2))
    client = HangingUpClient(payload(stream=True), after_chunks=100)
    await call(app, "/v1/chat/completions", client)
    assert client.chunks[-1] == b"data: [DONE]\n\n"
    assert backend.cancelled == [] and app.state.gateway.in_flight == 0


def _abort_line(app: FastAPI) -> bytes:
    text: bytes = app.state.gateway.metrics.render()
    lines = [line for line in text.splitlines() if line.startswith(b"kvsched:request_success")]
    return b"\n".join(line for line in lines if b"abort" in line and line.endswith(b" 1.0"))
