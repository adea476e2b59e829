"""The official `openai` SDK against the in-process gateway: whole, streamed, and its errors."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import openai
import pytest

from tests.service.fakes import MODEL, FakeBackend, make_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def sdk_client(backend: FakeBackend, **settings: object) -> AsyncIterator[openai.AsyncOpenAI]:
    app, _ = make_app(backend, api_keys=("secret",), **settings)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield openai.AsyncOpenAI(
                api_key="secret", base_url="http://test/v1", http_client=http, max_retries=0
            )


async def test_sdk_completions_whole_and_streamed() -> None:
    async with sdk_client(FakeBackend(num_tokens=3)) as client:
        whole = await client.completions.create(model=MODEL, prompt="one two", max_tokens=8)
        stream = await client.completions.create(
            model=MODEL, prompt="one two", max_tokens=8, stream=True,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = [chunk async for chunk in stream]
    assert whole.choices[0].text == " t0 t1 t2" and whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens == 3
    assert "".join(c.choices[0].text for c in chunks if c.choices) == " t0 t1 t2"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 5


async def test_sdk_chat_whole_and_streamed() -> None:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello"},
    ]
    async with sdk_client(FakeBackend(num_tokens=4)) as client:
        whole = await client.chat.completions.create(
            model=MODEL, messages=messages, max_completion_tokens=2
        )
        stream = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=10, stream=True
        )
        chunks = [chunk async for chunk in stream]
        models = await client.models.list()
    assert whole.choices[0].message.content == " t0 t1"
    assert whole.choices[0].finish_reason == "length" and whole.id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == " t0 t1 t2 t3"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [m.id for m in models.data] == [MODEL]


async def test_sdk_raises_its_typed_errors() -> None:
    async with sdk_client(FakeBackend(), max_model_len=16) as client:
        with pytest.raises(openai.NotFoundError) as not_found:
            await client.completions.create(model="nope", prompt="x", max_tokens=1)
        with pytest.raises(openai.BadRequestError) as too_long:
            await client.completions.create(model=MODEL, prompt="x", max_tokens=100)
    assert not_found.value.code == "model_not_found"
    assert too_long.value.code == "context_length_exceeded"


async def test_sdk_with_a_wrong_key_gets_authentication_error() -> None:
    app, _ = make_app(FakeBackend(), api_keys=("secret",))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            client = openai.AsyncOpenAI(
                api_key="wrong", base_url="http://test/v1", http_client=http, max_retries=0
            )
            with pytest.raises(openai.AuthenticationError):
                await client.models.list()


async def test_sdk_stream_error_event_raises() -> None:
    async with sdk_client(FakeBackend(num_tokens=5, fail_after=2)) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=10, stream=True
        )
        with pytest.raises(openai.APIError, match="worker 0 died"):
            async for _ in stream:
                pass
