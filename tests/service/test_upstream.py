"""`--engine openai-upstream` end to end: our gateway in front of fake vLLM-like servers.

The upstreams are real uvicorn servers (tests.service.upstream_fake); the gateway is driven
in-process, except for the disconnect test, where it is a real server too, so that the client
can hang up mid-stream.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from service.backends.upstream import UpstreamBackend
from service.backends.upstream.tokenizer import Llama3Tokenizer
from service.http.app import create_app
from service.metrics import Metrics
from tests.service.fakes import MODEL, FakeTokenizer, make_settings, parse_sse, serve
from tests.service.upstream_fake import UPSTREAM_MODEL, FakeUpstream, free_port, running

pytestmark = pytest.mark.anyio
PROMPT = "hello big world"  # FakeTokenizer: ids [5, 3, 5], decoded " t5 t3 t5"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def gateway(urls: list[str], *, token_ids: bool | None = None, **overrides: Any) -> FastAPI:
    fields: dict[str, Any] = {"upstream_probe_interval_s": 0.05, "upstream_timeout_s": 5.0}
    fields.update(overrides)
    settings = make_settings(engine="openai-upstream", upstream=tuple(urls), **fields)
    if token_ids is None:  # the app builds the backend, as `kvsched serve` does
        return create_app(settings, tokenizer=FakeTokenizer())
    metrics = Metrics(settings.model_name)
    backend = UpstreamBackend(settings, FakeTokenizer(), send_token_ids=token_ids, metrics=metrics)
    return create_app(settings, backend=backend, tokenizer=FakeTokenizer(), metrics=metrics)


@asynccontextmanager
async def upstreams(*fakes: FakeUpstream) -> AsyncIterator[list[str]]:
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(running(fake.app)) for fake in fakes]


async def test_streaming_through_the_gateway() -> None:
    fake = FakeUpstream(num_tokens=3)
    async with upstreams(fake) as urls, serve(gateway(urls)) as client:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 8, "stream": True,
                "stream_options": {"include_usage": True}}  # fmt: skip
        response = await client.post("/v1/completions", json=body)
    assert response.status_code == 200, response.text
    events = parse_sse(response.text)
    chunks, usage = events[:-2], events[-2]
    assert "".join(c["choices"][0]["text"] for c in chunks) == " w0 w1 w2"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    sent = fake.bodies[0]
    assert sent["prompt"] == " t5 t3 t5" and sent["stream"] is True  # text: no --tokenizer
    assert sent["model"] == UPSTREAM_MODEL and sent["max_tokens"] == 8
    assert sent["stream_options"]["include_usage"] is True
    assert sent["vllm_xargs"] == {"kvsched_lo": 1, "kvsched_hi": 8}
    assert fake.request_ids[0].startswith("cmpl-")


async def test_json_with_token_ids_and_chunk_counts() -> None:
    fake = FakeUpstream(num_tokens=4, usage=False)  # no usage: tokens counted from chunks
    async with upstreams(fake) as urls, serve(gateway(urls, token_ids=True)) as client:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["message"]["content"] == " w0 w1 w2 w3"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"]["completion_tokens"] == 4
    assert fake.bodies[0]["prompt"] == FakeTokenizer().encode("<|user|>\nhi\n<|assistant|>\n")


async def test_routes_to_the_least_loaded_upstream() -> None:
    busy, calm = FakeUpstream(), FakeUpstream()
    busy.kv_usage, busy.num_waiting = 0.8, 4
    calm.kv_usage = 0.1
    async with upstreams(busy, calm) as urls, serve(gateway(urls)) as client:
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 3}
        for _ in range(3):
            assert (await client.post("/v1/completions", json=body)).status_code == 200
        assert (len(busy.bodies), len(calm.bodies)) == (0, 3)
        busy.kv_usage, busy.num_waiting, calm.kv_usage = 0.0, 0, 0.95
        await asyncio.sleep(0.3)  # a few probe rounds
        for _ in range(2):
            assert (await client.post("/v1/completions", json=body)).status_code == 200
        state = (await client.get("/v1/scheduler")).json()
        metrics = (await client.get("/metrics")).text
    assert (len(busy.bodies), len(calm.bodies)) == (2, 3)
    assert 'kvsched:generation_tokens_total{model_name="fake-model",worker="1"} 9.0' in metrics
    reported = [u["reported_kv_usage"] for u in state["upstreams"]]
    assert reported == [0.0, 0.95] and all(u["reachable"] for u in state["upstreams"])
    assert [u["num_served"] for u in state["upstreams"]] == [2, 3]


async def test_admission_holds_requests_until_the_former_admits_them() -> None:
    fake = FakeUpstream(num_tokens=2)
    fake.gate = asyncio.Event()
    # mcsf plans with hi: each request 3 prompt + hi 40 (no predictor: hi = max_tokens) = 43;
    # two fit in 100, a third would reach 129
    async with (
        upstreams(fake) as urls,
        serve(gateway(urls, policy="mcsf", upstream_kv_tokens=100)) as client,
    ):
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 40}
        posts = [asyncio.create_task(client.post("/v1/completions", json=body)) for _ in range(5)]
        while fake.active < 2:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # time for a wrongly admitted third request to arrive
        state = (await client.get("/v1/scheduler")).json()
        assert fake.active == 2 and state["num_waiting"] == 3
        assert state["upstreams"][0]["projected_kv_tokens"] == 86
        fake.gate.set()
        responses = await asyncio.gather(*posts)
        state = (await client.get("/v1/scheduler")).json()
    assert all(r.status_code == 200 for r in responses)
    assert fake.max_active == 2 and len(fake.bodies) == 5
    assert state["num_requests"] == 0 and state["upstreams"][0]["projected_kv_tokens"] == 0


async def test_shortest_predicted_first_for_mcsf() -> None:
    fake = FakeUpstream(num_tokens=1)
    fake.gate = asyncio.Event()
    async with upstreams(fake) as urls:
        app = gateway(urls, policy="mcsf", upstream_kv_tokens=60)
        async with serve(app) as client:
            first = asyncio.create_task(client.post("/v1/completions", json=_body(50)))
            while fake.active < 1:
                await asyncio.sleep(0.01)
            rest = [asyncio.create_task(client.post("/v1/completions", json=_body(n)))
                    for n in (40, 10, 30)]  # fmt: skip
            await asyncio.sleep(0.2)
            fake.gate.set()
            await asyncio.gather(first, *rest)
    assert [b["max_tokens"] for b in fake.bodies] == [50, 10, 30, 40]


def _body(max_tokens: int) -> dict[str, Any]:
    return {"model": MODEL, "prompt": PROMPT, "max_tokens": max_tokens}


async def test_client_disconnect_cancels_the_upstream_call() -> None:
    fake = FakeUpstream(num_tokens=200, delay_s=0.02)
    async with upstreams(fake) as urls, running(gateway(urls)) as url:
        async with httpx.AsyncClient(base_url=url, timeout=5) as client:
            body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 200, "stream": True}
            async with client.stream("POST", "/v1/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if line.startswith("data:"):
                        break  # one chunk, then hang up
            for _ in range(200):
                if fake.cut:
                    break
                await asyncio.sleep(0.02)
            state = (await client.get("/v1/scheduler")).json()
            assert fake.cut == fake.request_ids[:1]  # before the servers stop and cut it anyway
    assert state["num_requests"] == 0 and state["upstreams"][0]["num_in_flight"] == 0


async def test_kvsched_serve_cli_with_the_default_tokenizer() -> None:
    fake = FakeUpstream(num_tokens=2)
    port = free_port()
    async with upstreams(fake) as urls, httpx.AsyncClient(timeout=5) as client:
        cmd = [sys.executable, "-m", "service.cli", "serve", "--engine", "openai-upstream",
               "--upstream", urls[0], "--upstream-kv-tokens", "4000", "--predictor", "none",
               "--port", str(port), "--policy", "fcfs", "--log-level", "warning"]  # fmt: skip
        proc = await asyncio.create_subprocess_exec(*cmd)
        try:
            url = f"http://127.0.0.1:{port}"
            await _wait_ready(client, url, proc)
            body = {"model": "kvsched-openai-upstream", "prompt": "Héllo wörld", "max_tokens": 5}
            response = await client.post(f"{url}/v1/completions", json=body)
            state = (await client.get(f"{url}/v1/scheduler")).json()
        finally:
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 30)
    assert response.status_code == 200, response.text
    num_prompt = len(Llama3Tokenizer().encode("Héllo wörld"))
    assert response.json()["usage"]["prompt_tokens"] == num_prompt  # the gateway's Llama-3 count
    assert fake.bodies[0]["prompt"] == "Héllo wörld"  # forwarded as the same text
    assert state["gateway"]["kv_capacity_tokens"] == 4000 and state["policy"] == "fcfs"
    assert code == 0


async def _wait_ready(
    client: httpx.AsyncClient, url: str, proc: asyncio.subprocess.Process
) -> None:
    for _ in range(300):
        assert proc.returncode is None, "kvsched serve exited during start-up"
        try:
            if (await client.get(f"{url}/ready")).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.1)
    pytest.fail("kvsched serve was not ready within 30 s")


async def test_the_upstreams_context_length_is_enforced_at_the_gateway() -> None:
    """vLLM's /v1/models reports max_model_len: the gateway refuses what the upstream would."""
    small, large = FakeUpstream(), FakeUpstream()
    small.max_model_len, large.max_model_len = 20, 4096
    async with upstreams(small, large) as urls, serve(gateway(urls)) as client:
        models = (await client.get("/v1/models")).json()
        fits = await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 17})
        refused = await client.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 18})
    assert models["data"][0]["max_model_len"] == 20  # the smallest upstream's
    assert fits.status_code == 200
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded"
    assert len(small.bodies) + len(large.bodies) == 1
