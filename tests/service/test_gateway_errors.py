"""Bad input, auth, size limits, overload, failures: OpenAI error objects, no 5xx for input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.protocol import GenerationRequest, TokenEvent
from tests.service.fakes import MODEL, FakeBackend, make_app, parse_sse, serve

pytestmark = pytest.mark.anyio
COMPLETION = {"model": MODEL, "prompt": "hello world", "max_tokens": 4}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


async def post(path: str, **kwargs: Any) -> httpx.Response:
    app, _ = make_app()
    async with serve(app) as client:
        return await client.post(path, **kwargs)


async def test_malformed_json_is_400() -> None:
    headers = {"content-type": "application/json"}
    response = await post("/v1/completions", content=b'{"prompt": "x",', headers=headers)
    assert "malformed JSON" in assert_error(response, 400)["message"]


@pytest.mark.parametrize(
    ("path", "patch", "param"),
    [
        ("/v1/completions", {"max_tokens": "5"}, "max_tokens"),
        ("/v1/completions", {"max_tokens": 2.5}, "max_tokens"),
        ("/v1/completions", {"stream": "yes"}, "stream"),
        ("/v1/completions", {"prompt": 5}, "prompt"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"max_tokens": -3}, "max_tokens"),
        ("/v1/completions", {"n": 2}, "n"),
        ("/v1/completions", {"length_hint": 0}, "length_hint"),
        ("/v1/completions", {"stream_options": {"include_usage": 1}}, "stream_options"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": "hi"}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, "messages"),
        ("/v1/chat/completions", {"max_completion_tokens": 0}, "max_completion_tokens"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "url": "x"}]}]},
            "messages",
        ),
    ],
)
async def test_invalid_fields_are_400_naming_the_field(
    path: str, patch: dict[str, Any], param: str
) -> None:
    base = COMPLETION if path == "/v1/completions" else CHAT
    error = assert_error(await post(path, json={**base, **patch}), 400)
    assert error["param"].startswith(param) and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"null", b""])
async def test_body_that_is_not_an_object_is_400(body: bytes) -> None:
    response = await post(
        "/v1/completions", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 400)


async def test_form_encoded_body_is_400() -> None:
    assert_error(await post("/v1/completions", data={"prompt": "x"}), 400)


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
async def test_unknown_model_is_404_model_not_found(path: str) -> None:
    base = COMPLETION if path == "/v1/completions" else CHAT
    response = await post(path, json={**base, "model": "gpt-17"})
    error = assert_error(response, 404, "model_not_found")
    assert "gpt-17" in error["message"] and error["param"] == "model"


async def test_prompt_without_tokens_is_400() -> None:
    assert_error(await post("/v1/completions", json={**COMPLETION, "prompt": "   "}), 400)


async def test_min_tokens_above_max_tokens_is_400() -> None:
    response = await post("/v1/completions", json={**COMPLETION, "min_tokens": 9})
    assert assert_error(response, 400)["param"] == "min_tokens"


async def test_prompt_plus_max_tokens_beyond_context_is_400() -> None:
    app, backend = make_app(max_model_len=8)
    async with serve(app) as client:
        too_long = await client.post("/v1/completions", json={**COMPLETION, "max_tokens": 7})
        fits = await client.post("/v1/completions", json={**COMPLETION, "max_tokens": 6})
        no_room = await client.post("/v1/completions", json={"prompt": "a b c d e f g h"})
    error = assert_error(too_long, 400, "context_length_exceeded")
    assert "8 tokens" in error["message"] and "9 tokens" in error["message"]
    assert fits.status_code == 200
    assert_error(no_room, 400, "context_length_exceeded")
    assert len(backend.requests) == 1


async def test_prompt_plus_max_tokens_beyond_worker_kv_capacity_is_400() -> None:
    app, _ = make_app(FakeBackend(worker_kv_tokens=6), max_model_len=4096)
    async with serve(app) as client:
        response = await client.post("/v1/completions", json={**COMPLETION, "max_tokens": 5})
    assert "KV-cache capacity is 6" in assert_error(response, 400)["message"]


async def test_body_over_limit_by_content_length_is_413() -> None:
    big = {**COMPLETION, "prompt": "x " * 1000}
    app, backend = make_app(max_body_bytes=1024)
    async with serve(app) as client:
        response = await client.post("/v1/completions", json=big)
    assert_error(response, 413, "request_too_large")
    assert backend.requests == []


async def test_streamed_body_over_limit_without_content_length_is_413() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"x " * 50
        yield b'"}'

    app, _ = make_app(max_body_bytes=1024)
    async with serve(app) as client:
        request = client.build_request("POST", "/v1/completions", content=chunks())
        assert "content-length" not in request.headers
        assert_error(await client.send(request), 413)


async def test_api_keys_guard_everything_but_open_paths(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# team keys\nfile-key\n")
    app, _ = make_app(api_keys=("env-key",), api_keys_file=keys, open_paths=("/health",))
    async with serve(app) as client:
        missing = await client.post("/v1/completions", json=COMPLETION)
        wrong = await client.post("/v1/completions", json=COMPLETION, headers=_bearer("nope"))
        basic = await client.get("/v1/models", headers={"Authorization": "Basic env-key"})
        metrics = await client.get("/metrics")
        health = await client.get("/health")
        good = [
            await client.post("/v1/completions", json=COMPLETION, headers=_bearer(key))
            for key in ("env-key", "file-key")
        ]
    for response in (missing, wrong, basic, metrics):
        assert_error(response, 401, "invalid_api_key")
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert health.status_code == 200 and [r.status_code for r in good] == [200, 200]


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_full_queue_answers_429_with_retry_after() -> None:
    backend = FakeBackend(num_tokens=2)
    backend.gate = asyncio.Event()
    app, _ = make_app(backend, max_queue=2)
    async with serve(app) as client:
        held = [asyncio.create_task(client.post("/v1/completions", json=COMPLETION)) for _ in "ab"]
        while len(backend.requests) < 2:
            await asyncio.sleep(0.001)
        refused = await client.post("/v1/completions", json=COMPLETION)
        refused_chat = await client.post("/v1/chat/completions", json=CHAT)
        backend.gate.set()
        finished = await asyncio.gather(*held)
        after = await client.post("/v1/completions", json=COMPLETION)
    for response in (refused, refused_chat):
        assert_error(response, 429, "rate_limit_exceeded")
        assert int(response.headers["Retry-After"]) >= 1
    assert [r.status_code for r in finished] == [200, 200] and after.status_code == 200


async def test_unknown_route_and_wrong_method_use_the_error_shape() -> None:
    app, _ = make_app()
    async with serve(app) as client:
        assert_error(await client.get("/v1/nothing"), 404, "not_found")
        assert_error(await client.get("/v1/completions"), 405, "method_not_allowed")


class ExplodingBackend(FakeBackend):
    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        raise RuntimeError("bug in the backend")


async def test_unexpected_exception_is_500_in_openai_shape(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, _ = make_app(ExplodingBackend())
    async with serve(app) as client:
        response = await client.post("/v1/completions", json=COMPLETION)
        scheduler = (await client.get("/v1/scheduler")).json()
    assert assert_error(response, 500)["type"] == "server_error"
    assert "bug in the backend" in caplog.text
    assert scheduler["gateway"]["num_in_flight"] == 0


@pytest.mark.parametrize("backend", [FakeBackend(fail_after=1), FakeBackend(truncate=True)])
async def test_backend_failure_is_500_whole_and_an_error_event_streamed(
    backend: FakeBackend,
) -> None:
    app, _ = make_app(backend)
    async with serve(app) as client:
        whole = await client.post("/v1/completions", json=COMPLETION)
        streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert_error(whole, 500, "generation_failed")
    events = parse_sse(streamed.text)
    assert events[-2]["error"]["code"] == "generation_failed"
    assert all("choices" in e for e in events[:-2])
