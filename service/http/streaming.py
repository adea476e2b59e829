"""Response bodies in vLLM's byte format: SSE chunks and whole responses (docs/serving.md, "API").

A stream is `data: {json}\\n\\n` per chunk (chat opens with a role chunk), `finish_reason` on the
last content chunk, an optional usage chunk with empty `choices`, then `data: [DONE]\\n\\n`; a
failure mid-stream is one `data: {"error": {...}}` event before `[DONE]`, as in vLLM.
Invariant: the Job is closed whenever the response ends (done, client gone, error), so an
unfinished request is always cancelled on the backend.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

from starlette.requests import ClientDisconnect, Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.gateway.gateway import Delta, Job
from service.http.schemas import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionResponse,
    ErrorDetail,
    ErrorResponse,
    Usage,
)

DONE = "data: [DONE]\n\n"


class Format(Protocol):
    """How one endpoint spells its chunks and whole responses (JSON text)."""

    def opening(self) -> list[str]: ...

    def chunk(self, delta: Delta) -> str: ...

    def usage_chunk(self, usage: Usage) -> str: ...

    def whole(self, text: str, finish_reason: str | None, usage: Usage) -> str: ...


class CompletionFormat:
    """/v1/completions: `text_completion` objects, streamed and whole."""

    def __init__(self, request_id: str, model: str, created: int) -> None:
        self.request_id = request_id
        self.model = model
        self.created = created

    def _response(self, choices: list[CompletionChoice], usage: Usage | None) -> str:
        return CompletionResponse(
            id=self.request_id, created=self.created, model=self.model, choices=choices,
            usage=usage,
        ).model_dump_json()  # fmt: skip

    def opening(self) -> list[str]:
        return []

    def chunk(self, delta: Delta) -> str:
        choice = CompletionChoice(text=delta.text, finish_reason=delta.finish_reason)
        return self._response([choice], None)

    def usage_chunk(self, usage: Usage) -> str:
        return self._response([], usage)

    def whole(self, text: str, finish_reason: str | None, usage: Usage) -> str:
        return self._response([CompletionChoice(text=text, finish_reason=finish_reason)], usage)


class ChatFormat:
    """/v1/chat/completions: `chat.completion.chunk` deltas and a `chat.completion`."""

    def __init__(self, request_id: str, model: str, created: int, *, include_usage: bool) -> None:
        self.request_id = request_id
        self.model = model
        self.created = created
        self.include_usage = include_usage

    def _chunk(self, choices: list[ChatChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(
            id=self.request_id, created=self.created, model=self.model, choices=choices,
            usage=usage,
        )  # fmt: skip
        # like OpenAI: "usage" appears (null until the last chunk) only when it was asked for
        return chunk.model_dump_json(exclude=None if self.include_usage else {"usage"})

    def opening(self) -> list[str]:
        return [self._chunk([ChatChunkChoice(delta=ChatDelta(role="assistant", content=""))])]

    def chunk(self, delta: Delta) -> str:
        choice = ChatChunkChoice(
            delta=ChatDelta(content=delta.text), finish_reason=delta.finish_reason
        )
        return self._chunk([choice])

    def usage_chunk(self, usage: Usage) -> str:
        return self._chunk([], usage)

    def whole(self, text: str, finish_reason: str | None, usage: Usage) -> str:
        choice = ChatChoice(message=AssistantMessage(content=text), finish_reason=finish_reason)
        return ChatCompletionResponse(
            id=self.request_id, created=self.created, model=self.model, choices=[choice],
            usage=usage,
        ).model_dump_json()  # fmt: skip


def usage_of(job: Job) -> Usage:
    prompt, completion = job.num_prompt_tokens, job.num_output_tokens
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


def error_json(message: str) -> str:
    detail = ErrorDetail(message=message, type="server_error", code="generation_failed")
    return ErrorResponse(error=detail).model_dump_json()


def _sse(payload: str) -> str:
    return f"data: {payload}\n\n"


async def event_stream(job: Job, fmt: Format, *, include_usage: bool) -> AsyncIterator[str]:
    """The SSE body of one request."""
    for opening in fmt.opening():
        yield _sse(opening)
    async for delta in job.deltas():
        if delta.finish_reason == "error":
            if delta.text:
                yield _sse(fmt.chunk(Delta(delta.text)))
            yield _sse(error_json(delta.error or "generation failed"))
            break
        yield _sse(fmt.chunk(delta))
    else:
        if include_usage:
            yield _sse(fmt.usage_chunk(usage_of(job)))
    yield DONE


class JobStreamingResponse(StreamingResponse):
    """A text/event-stream response that closes its Job however the stream ends."""

    def __init__(self, job: Job, content: AsyncIterator[str]) -> None:
        super().__init__(content, media_type="text/event-stream")
        self.headers["Cache-Control"] = "no-cache"
        self._job = job
        self._content = content

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except ClientDisconnect:
            pass  # the client left mid-stream: cancelled below
        finally:
            self._job.close()
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:
                await aclose()


async def collect_or_cancel(request: Request, job: Job) -> str:
    """The whole text, or ClientDisconnect as soon as the client leaves (the job is closed)."""

    async def collect() -> str:
        return "".join([delta.text async for delta in job.deltas()])

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    text_task = asyncio.ensure_future(collect())
    gone_task = asyncio.ensure_future(wait_disconnect())
    try:
        await asyncio.wait((text_task, gone_task), return_when=asyncio.FIRST_COMPLETED)
        if not text_task.done():
            raise ClientDisconnect()
        return text_task.result()
    finally:
        text_task.cancel()
        gone_task.cancel()
        job.close()
        await asyncio.gather(text_task, gone_task, return_exceptions=True)
