"""`--engine openai-upstream` failures: every one ends quickly as an OpenAI error, none hangs.

Non-streaming clients get the status the failure calls for (502 unreachable or broken upstream,
503 none reachable or upstream overloaded, 504 upstream silent, the upstream's own 4xx);
streaming clients get an error event before `data: [DONE]`. `wait_for` bounds guard against
hangs only; nothing here measures speed.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import httpx
import pytest

from tests.service.fakes import MODEL, parse_sse, serve
from tests.service.test_upstream import PROMPT, gateway, upstreams
from tests.service.upstream_fake import FakeUpstream, free_port, running

pytestmark = pytest.mark.anyio
BODY = {"model": MODEL, "prompt": PROMPT, "max_tokens": 4}
HANG_GUARD_S = 10.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    return str(error["message"])


def stream_error(response: httpx.Response) -> str:
    """The message of the error event of a streamed response (200, error event, [DONE])."""
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    errors = [e for e in events if isinstance(e, dict) and "error" in e]
    assert len(errors) == 1 and events[-1] == "[DONE]", events
    return str(errors[0]["error"]["message"])


async def post(client: httpx.AsyncClient, **extra: Any) -> httpx.Response:
    request = client.post("/v1/completions", json={**BODY, **extra})
    return await asyncio.wait_for(request, HANG_GUARD_S)


async def test_no_reachable_upstream_is_not_ready_and_503() -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with serve(gateway([dead])) as client:
        ready = await client.get("/ready")
        response = await post(client)
        state = (await client.get("/v1/scheduler")).json()
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    assert_error(response, 503, "not_ready")
    upstream = state["upstreams"][0]
    assert upstream["reachable"] is False and "ConnectError" in upstream["last_error"]


async def test_upstream_that_dies_between_probes_gives_502() -> None:
    fake = FakeUpstream()
    async with AsyncExitStack() as stack:
        url = await stack.enter_async_context(running(fake.app))
        app = gateway([url], upstream_probe_interval_s=60.0)  # no probe notices in time
        async with serve(app) as client:
            assert (await post(client)).status_code == 200
            ready_before = (await client.get("/ready")).status_code
            await stack.aclose()  # the upstream server stops: connections are refused
            response = await post(client)
            ready_after = (await client.get("/ready")).status_code
    assert ready_before == 200
    assert url in assert_error(response, 502, "bad_gateway")
    assert ready_after == 503  # marked down: it was the only upstream


@pytest.mark.parametrize(
    ("upstream_status", "status", "code"),
    [
        (500, 502, "bad_gateway"),
        (503, 503, "upstream_unavailable"),
        (400, 400, "upstream_rejected"),
    ],
)
async def test_upstream_error_status(upstream_status: int, status: int, code: str) -> None:
    fake = FakeUpstream()
    fake.status = upstream_status
    async with upstreams(fake) as urls, serve(gateway(urls)) as client:
        response = await post(client)
        streamed = await post(client, stream=True)
    message = assert_error(response, status, code)
    assert f"answered {upstream_status}" in message and "fake upstream error" in message
    assert "fake upstream error" in stream_error(streamed)


async def test_hanging_upstream_times_out_with_504() -> None:
    fake = FakeUpstream()
    fake.hang = True
    async with upstreams(fake) as urls, serve(gateway(urls, upstream_timeout_s=0.3)) as client:
        response = await post(client)
        streamed = await post(client, stream=True)
        state = (await client.get("/v1/scheduler")).json()
        for _ in range(100):
            if len(fake.cut) == 2:
                break
            await asyncio.sleep(0.02)
        assert fake.cut == fake.request_ids  # we closed both connections (upstream still up)
    assert "sent nothing" in assert_error(response, 504, "upstream_timeout")
    assert "sent nothing" in stream_error(streamed)
    assert state["num_requests"] == 0 and state["upstreams"][0]["num_in_flight"] == 0
