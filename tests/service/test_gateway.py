"""The gateway's happy paths over a FakeBackend: both endpoints, whole and streamed (SSE)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from predictors.online import UNCAPPED
from tests.service.fakes import MODEL, FakeBackend, FakePredictor, make_app, parse_sse, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the gateway runs on asyncio (uvicorn)


COMPLETION = {"model": MODEL, "prompt": "say three words", "max_tokens": 10}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi there"}], "max_tokens": 10}


async def test_completion_whole_has_openai_shape_and_usage() -> None:
    app, backend = make_app(FakeBackend(num_tokens=3))
    async with serve(app) as client:
        response = await client.post("/v1/completions", json=COMPLETION)
    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion"
    assert body["model"] == MODEL and isinstance(body["created"], int)
    assert body["choices"] == [
        {"index": 0, "text": " t0 t1 t2", "logprobs": None, "finish_reason": "stop"}
    ]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    request = backend.requests[0]
    assert request.request_id == body["id"] and request.prompt_token_ids == (3, 5, 5)
    assert (request.max_tokens, request.lo, request.hi) == (10, 1, 10)


async def test_completion_stops_at_max_tokens_with_length() -> None:
    app, _ = make_app(FakeBackend(num_tokens=50))
    async with serve(app) as client:
        response = await client.post("/v1/completions", json={**COMPLETION, "prompt": ["x y"]})
    body = response.json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 10


async def test_completion_stream_is_exact_sse_with_finish_on_last_content_chunk() -> None:
    app, _ = make_app(FakeBackend(num_tokens=3))
    async with serve(app) as client:
        response = await client.post("/v1/completions", json={**COMPLETION, "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    chunks = events[:-1]
    assert [c["choices"][0]["text"] for c in chunks] == [" t0", " t1", " t2"]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, "stop"]
    assert {c["object"] for c in chunks} == {"text_completion"}
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")


async def test_completion_stream_usage_chunk_has_empty_choices() -> None:
    app, _ = make_app(FakeBackend(num_tokens=2))
    payload = {**COMPLETION, "stream": True, "stream_options": {"include_usage": True}}
    async with serve(app) as client:
        events = parse_sse((await client.post("/v1/completions", json=payload)).text)
    usage = events[-2]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert events[-3]["choices"][0]["finish_reason"] == "stop"


async def test_chat_whole_uses_template_and_max_completion_tokens() -> None:
    app, backend = make_app(FakeBackend(num_tokens=20))
    payload = {**CHAT, "max_completion_tokens": 4}
    async with serve(app) as client:
        response = await client.post("/v1/chat/completions", json=payload)
    body = response.json()
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": " t0 t1 t2 t3"},
            "logprobs": None,
            "finish_reason": "length",
        }
    ]
    # "<|user|>\nhi there\n<|assistant|>\n" -> words "<|user|>", "hi", "there", "<|assistant|>"
    assert backend.requests[0].prompt_token_ids == (8, 2, 5, 13)
    assert backend.requests[0].max_tokens == 4


async def test_chat_stream_opens_with_role_and_ends_with_usage_and_done() -> None:
    app, _ = make_app(FakeBackend(num_tokens=2))
    payload = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with serve(app) as client:
        events = parse_sse((await client.post("/v1/chat/completions", json=payload)).text)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    deltas = [e["choices"][0] for e in events[1:-2]]
    assert [d["delta"] for d in deltas] == [{"content": " t0"}, {"content": " t1"}]
    assert [d["finish_reason"] for d in deltas] == [None, "stop"]
    assert {e["object"] for e in events[:-1]} == {"chat.completion.chunk"}
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 2


async def test_chat_stream_without_usage_has_no_usage_key() -> None:
    app, _ = make_app(FakeBackend(num_tokens=1))
    async with serve(app) as client:
        response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    events = parse_sse(response.text)
    assert len(events) == 3 and all("usage" not in e for e in events[:-1])


async def test_model_may_be_omitted_and_vllm_extras_reach_the_backend() -> None:
    app, backend = make_app(FakeBackend(num_tokens=2))
    payload = {"prompt": "a b", "max_tokens": 5, "ignore_eos": True, "min_tokens": 2,
               "priority": 3, "temperature": 0.7, "top_p": 0.9, "stop": ["\n"], "n": 1,
               "user": "someone"}  # fmt: skip
    async with serve(app) as client:
        response = await client.post("/v1/completions", json=payload)
    assert response.status_code == 200
    request = backend.requests[0]
    assert (request.ignore_eos, request.min_tokens, request.priority) == (True, 2, 3)
    assert (request.lo, request.hi) == (5, 5)  # ignore_eos: the length is exactly max_tokens
    assert response.json()["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize(
    ("predicted", "hint", "expected"),
    [((4, 8), None, (4, 8)), ((4, 8), 20, (4, 20)), ((4, 8), 2, (2, 8)), ((4, 8), 500, (4, 30))],
)
async def test_interval_comes_from_predictor_widened_by_length_hint(
    predicted: tuple[int, int], hint: int | None, expected: tuple[int, int]
) -> None:
    predictor = FakePredictor(*predicted)
    app, backend = make_app(predictor=predictor)
    payload = {**COMPLETION, "max_tokens": 30, "length_hint": hint}
    async with serve(app) as client:
        assert (await client.post("/v1/completions", json=payload)).status_code == 200
    assert (backend.requests[0].lo, backend.requests[0].hi) == expected
    batch = predictor.batches[0]
    assert batch.prompts == ("say three words",) and batch.models == (MODEL,)
    # online recalibration (on by default) asks for the model's uncapped interval, then caps
    assert list(batch.prompt_tokens) == [3] and list(batch.max_tokens) == [UNCAPPED]


async def test_length_hint_without_predictor_is_the_interval() -> None:
    app, backend = make_app()
    async with serve(app) as client:
        await client.post("/v1/completions", json={**COMPLETION, "length_hint": 7})
    assert (backend.requests[0].lo, backend.requests[0].hi) == (7, 7)


async def test_default_max_tokens_is_the_room_left_in_the_context() -> None:
    app, backend = make_app(max_model_len=64)
    async with serve(app) as client:
        await client.post("/v1/completions", json={"prompt": "a b c d"})
    assert backend.requests[0].max_tokens == 60


async def test_concurrent_streams_all_complete_and_release_their_slots() -> None:
    app, backend = make_app(FakeBackend(num_tokens=5), max_queue=64)
    payload = {**COMPLETION, "stream": True}
    async with serve(app) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/completions", json=payload) for _ in range(40))
        )
        scheduler = (await client.get("/v1/scheduler")).json()
    assert all(len(parse_sse(r.text)) == 6 for r in responses)
    assert len({r.request_id for r in backend.requests}) == 40
    assert scheduler["gateway"]["num_in_flight"] == 0 and backend.cancelled == []


async def test_models_health_ready_and_scheduler() -> None:
    app, backend = make_app(FakeBackend(worker_kv_tokens=500), max_model_len=4096)
    async with serve(app) as client:
        models = (await client.get("/v1/models")).json()
        health = await client.get("/health")
        ready = await client.get("/ready")
        scheduler = (await client.get("/v1/scheduler")).json()
    assert models["object"] == "list" and models["data"][0]["id"] == MODEL
    assert models["data"][0]["max_model_len"] == 4096
    assert health.status_code == 200 and ready.status_code == 200
    assert scheduler["policy"] == "fake-policy"
    assert scheduler["gateway"]["num_in_flight"] == 0 and scheduler["gateway"]["ready"]
    assert scheduler["gateway"]["kv_capacity_tokens"] == 500
    assert backend.stopped  # the lifespan stopped the backend


async def test_ready_is_503_while_backend_not_ready_but_health_is_200() -> None:
    app, _ = make_app(FakeBackend(ready=False))
    async with serve(app) as client:
        assert (await client.get("/ready")).status_code == 503
        assert (await client.get("/health")).status_code == 200
        refused = await client.post("/v1/completions", json=COMPLETION)
    assert refused.status_code == 503 and "Retry-After" in refused.headers
    assert refused.json()["error"]["code"] == "not_ready"


async def test_after_shutdown_ready_is_503_and_new_requests_are_refused() -> None:
    app, backend = make_app()
    transport = httpx.ASGITransport(app=app)
    async with serve(app):
        pass  # lifespan ran start and stop
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ready = await client.get("/ready")
        refused = await client.post("/v1/completions", json=COMPLETION)
    assert backend.stopped and ready.status_code == 503 and ready.json() == {"ready": False}
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
