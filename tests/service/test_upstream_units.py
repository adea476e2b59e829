"""The `openai-upstream` engine's parts: load parsing, capacity rules, chunk parsing, settings
validation, and the backend against httpx's MockTransport (the batch former's admissions:
test_upstream_scheduler.py).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from service.backends.upstream import UpstreamBackend
from service.backends.upstream.forward import UpstreamError, finish_reason_of, parse_chunk
from service.backends.upstream.state import Upstream, parse_load
from service.backends.upstream.tokenizer import Llama3Tokenizer, load_tokenizer
from service.cli import main
from service.protocol import GenerationRequest, TokenEvent
from service.settings import Settings
from tests.service.fakes import FakeTokenizer

VLLM_METRICS = """# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.75
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
vllm:num_requests_waiting{engine="1",model_name="m"} 2.0
"""


def request(rid: str, lo: int = 1, hi: int = 10, prompt: int = 5) -> GenerationRequest:
    return GenerationRequest(rid, tuple(range(1, prompt + 1)), max_tokens=hi, lo=lo, hi=hi)


def test_parse_load_reads_vllm_and_sglang_gauges() -> None:
    load = parse_load(VLLM_METRICS)
    assert (load.kv_usage, load.num_waiting, load.num_running) == (0.5, 5, None)
    sglang = parse_load("sglang:token_usage 0.4\nsglang:num_queue_reqs 7\n")
    assert (sglang.kv_usage, sglang.num_waiting) == (0.4, 7)
    assert parse_load("# nothing\n").kv_usage is None
    with pytest.raises(ValueError):
        parse_load("vllm:kv_cache_usage_perc not-a-number\n")


def test_takes_another_by_watermark_and_in_flight_cap_while_capacity_unknown() -> None:
    unknown = Upstream(1, "http://b/", capacity_tokens=None, max_in_flight=2)
    assert unknown.url == "http://b" and not unknown.takes_another()  # not reachable yet
    unknown.reachable = True
    assert unknown.takes_another()  # idle: anything, or a large request would wait forever
    unknown.admit(1000, 5)
    assert unknown.takes_another()
    unknown.reported = parse_load("vllm:kv_cache_usage_perc 0.95\n")
    assert not unknown.takes_another()
    unknown.reported = parse_load("vllm:kv_cache_usage_perc 0.1\n")
    unknown.admit(1, 1)
    assert not unknown.takes_another()  # max_in_flight reached


def test_capacity_is_learned_from_usage_and_never_overrides_a_configured_one() -> None:
    up = Upstream(0, "http://a", capacity_tokens=None, max_in_flight=8)
    up.admit(300, 200)
    up.generated(300)  # 500 tokens of ours on it
    up.reported = parse_load("vllm:kv_cache_usage_perc 0.25\n")
    up.learn_capacity()
    assert up.capacity_tokens == 2000
    up.reported = parse_load("vllm:kv_cache_usage_perc 0.5\n")  # sample 1000
    up.learn_capacity()
    assert up.capacity_tokens == 1750  # running average, rate 0.25
    up.reported = parse_load("vllm:kv_cache_usage_perc 0.01\n")  # too low to trust
    up.learn_capacity()
    assert up.capacity_tokens == 1750
    fixed = Upstream(1, "http://b", capacity_tokens=4096, max_in_flight=8)
    fixed.admit(300, 200)
    fixed.reported = parse_load("vllm:kv_cache_usage_perc 0.5\n")
    fixed.learn_capacity()
    assert fixed.capacity_tokens == 4096 and fixed.describe()["capacity_source"] == "configured"


def test_load_combines_projected_reported_and_waiting() -> None:
    up = Upstream(0, "http://a", capacity_tokens=1000, max_in_flight=8)
    up.admit(300, 10)
    assert up.load() == pytest.approx(0.3)
    up.reported = parse_load(VLLM_METRICS)  # usage 0.5, 5 waiting
    assert up.load() == pytest.approx(0.5 + 5 / 16)


def test_parse_chunk_and_finish_reasons() -> None:
    chunk = parse_chunk("u", '{"choices": [{"text": " x", "finish_reason": null}], '
                             '"usage": {"prompt_tokens": 4, "completion_tokens": 2}}')  # fmt: skip
    assert (chunk.text, chunk.num_prompt_tokens, chunk.num_output_tokens) == (" x", 4, 2)
    assert parse_chunk("u", '{"choices": [], "usage": null}').text == ""
    for bad in ("{not json", "[1]", '{"choices": "x"}'):
        with pytest.raises(UpstreamError, match="malformed chunk") as caught:
            parse_chunk("u", bad)
        assert caught.value.status == 502
    with pytest.raises(UpstreamError, match="mid-stream: out of memory"):
        parse_chunk("u", '{"error": {"message": "out of memory"}}')
    assert [finish_reason_of("u", r) for r in ("stop", "length", "tool_calls")] == [
        "stop", "length", "stop",
    ]  # fmt: skip
    for bad_reason in (None, "abort"):
        with pytest.raises(UpstreamError):
            finish_reason_of("u", bad_reason)


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"engine": "openai-upstream"}, "needs --upstream"),
     ({"engine": "openai-upstream", "upstream": ("vllm-0:8000",)}, "not an http"),
     ({"engine": "openai-upstream", "upstream": ("http://a", "http://a")}, "twice"),
     ({"engine": "openai-upstream", "upstream": ("http://a",), "workers": 2}, "no worker"),
     ({"engine": "sim", "upstream": ("http://a",)}, "only for --engine openai-upstream"),
     ({"engine": "vllm"}, "needs --model")],
)  # fmt: skip
def test_settings_validation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings(**fields)


def test_cli_without_upstream_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--engine", "openai-upstream", "--predictor", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsched: error: invalid settings:") and "--upstream" in err
    assert err.count("\n") == 1


def test_tokenizers() -> None:
    llama = Llama3Tokenizer()
    text = "Héllo, wörld! 12345 <|eot_id|>\n\tend"
    assert llama.decode(llama.encode(text)) == text and len(llama.encode("hello world")) == 2
    assert isinstance(load_tokenizer(upstream_settings()), Llama3Tokenizer)
    with pytest.raises(ValueError, match="not a local directory"):
        load_tokenizer(upstream_settings(tokenizer="/no/such/dir"))


def upstream_settings(**fields: Any) -> Settings:
    return Settings(**{"engine": "openai-upstream", "upstream": ("http://a",), **fields})


def mock_backend(handler: Any, urls: tuple[str, ...], **fields: Any) -> UpstreamBackend:
    settings = Settings(engine="openai-upstream", upstream=urls, upstream_probe_interval_s=60,
                        predictor="none", **fields)  # fmt: skip
    transport = httpx.MockTransport(handler)
    return UpstreamBackend(settings, FakeTokenizer(), send_token_ids=True, transport=transport)


def sse(*texts: str) -> bytes:
    chunks = [{"choices": [{"text": t, "finish_reason": None}]} for t in texts]
    chunks[-1]["choices"][0]["finish_reason"] = "stop"
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


async def collect(backend: UpstreamBackend, req: GenerationRequest) -> list[TokenEvent]:
    return [event async for event in backend.generate(req)]


def test_connect_failure_retries_on_another_upstream() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v1/completions" and req.url.host == "a":
            raise httpx.ConnectError("refused", request=req)
        if req.url.path == "/v1/completions":
            return httpx.Response(200, content=sse(" x", " y"))
        return httpx.Response(200, text="vllm:kv_cache_usage_perc 0.0\n")

    async def run() -> tuple[list[TokenEvent], dict[str, Any]]:
        backend = mock_backend(handler, ("http://a", "http://b"))
        await backend.start()
        events = await collect(backend, request("r1"))
        state = backend.describe()
        await backend.stop(1.0)
        return events, state

    events, state = asyncio.run(run())
    assert "".join(e.text for e in events) == " x y" and events[-1].finish_reason == "stop"
    assert events[-1].num_output_tokens == 2  # counted from chunks: no usage sent
    a, b = state["upstreams"]
    assert (a["reachable"], a["num_failed"], b["num_served"]) == (False, 1, 1)


def test_cancel_while_queued_never_reaches_the_upstream() -> None:
    gate = asyncio.Event()
    sent: list[str] = []

    async def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path != "/v1/completions":
            return httpx.Response(200, text="")
        sent.append(req.headers["x-request-id"])
        await gate.wait()
        return httpx.Response(200, content=sse(" x"))

    async def run() -> tuple[list[TokenEvent], list[TokenEvent], dict[str, Any]]:
        backend = mock_backend(handler, ("http://a",), upstream_kv_tokens=20, policy="fcfs")
        await backend.start()
        first = asyncio.create_task(collect(backend, request("r1")))  # 15 of 20 tokens (hi)
        second = asyncio.create_task(collect(backend, request("r2")))  # 15 more: waits
        await asyncio.sleep(0.05)
        queued = backend.describe()["num_waiting"]
        backend.cancel("r2")
        gate.set()
        results = await first, await second
        state = backend.describe()
        await backend.stop(1.0)
        assert queued == 1
        return results[0], results[1], state

    done, cancelled, state = asyncio.run(run())
    assert done[-1].finish_reason == "stop" and cancelled[-1].finish_reason == "abort"
    assert sent == ["r1"] and state["num_waiting"] == 0 and state["num_requests"] == 0


def test_cancel_right_after_admission_gives_the_kv_back() -> None:
    gate = asyncio.Event()

    async def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/v1/completions":
            await gate.wait()
            return httpx.Response(200, content=sse(" x"))
        return httpx.Response(200, text="")

    async def run() -> tuple[int, list[TokenEvent]]:
        backend = mock_backend(handler, ("http://a",), upstream_kv_tokens=20)
        await backend.start()
        first = asyncio.create_task(collect(backend, request("r1")))
        second = asyncio.create_task(collect(backend, request("r2")))
        await asyncio.sleep(0.05)
        upstream = backend.upstreams[0]
        upstream.configured_capacity = 100
        backend._dispatch()  # admits r2 ...
        backend.cancel("r2")  # ... and r2 is cancelled before its task wakes up
        await asyncio.sleep(0.05)
        projected = upstream.projected_tokens
        gate.set()
        await first
        await backend.stop(1.0)
        return projected, await second

    projected, cancelled = asyncio.run(run())
    assert projected == 15 and cancelled[-1].finish_reason == "abort"  # r1's 5 + 10 only
