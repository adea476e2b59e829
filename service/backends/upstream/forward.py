"""One request forwarded to an upstream as a streaming /v1/completions call (see
docs/serving-upstream.md).

`completion_body` builds the request (prompt text or token ids, `stream_options` asking for
usage on every chunk, the interval in `vllm_xargs` for an upstream running kvsched's scheduler);
`stream_chunks` yields the upstream's SSE chunks as `Chunk`s. Every failure is an
`UpstreamError` carrying the HTTP status the client should get: 502 unreachable, broken or 5xx
upstream (503 when it said 503), 504 silent for the read timeout, its own status for a 4xx.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from service.protocol import FinishReason, GenerationRequest


class UpstreamError(Exception):
    """A forwarded request failed; `status` is what the client gets, `retryable` = never sent."""

    def __init__(self, status: int, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.status, self.retryable = status, retryable


@dataclass(frozen=True, slots=True)
class Chunk:
    """One SSE chunk: its text, finish reason, and usage counts when it carries them."""

    text: str = ""
    finish_reason: str | None = None
    num_prompt_tokens: int | None = None
    num_output_tokens: int | None = None


def completion_body(
    request: GenerationRequest, prompt: str | list[int], model: str | None
) -> dict[str, Any]:
    """The JSON body of the streaming /v1/completions call for `request`."""
    body: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": request.max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "vllm_xargs": {"kvsched_lo": request.lo, "kvsched_hi": request.hi},
        "temperature": request.temperature,
    }
    if request.temperature > 0:
        body.update(top_p=request.top_p, seed=request.seed)
    if model is not None:
        body["model"] = model
    if request.min_tokens:
        body["min_tokens"] = request.min_tokens
    if request.ignore_eos:
        body["ignore_eos"] = True
    return body


async def stream_chunks(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], request_id: str
) -> AsyncIterator[Chunk]:
    """POST `body` to `url`/v1/completions and yield its chunks until `data: [DONE]`."""
    headers = {"X-Request-Id": request_id, "Accept": "text/event-stream"}
    try:
        async with client.stream(
            "POST", f"{url}/v1/completions", json=body, headers=headers
        ) as response:
            if response.status_code != 200:
                raise await _status_error(url, response)
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue  # blank separators, comments, event names
                payload = line[len("data:") :].strip()
                if payload == "[DONE]":
                    return
                yield parse_chunk(url, payload)
    except httpx.TimeoutException as exc:
        what = "did not accept the connection" if _is_connect(exc) else "sent nothing"
        raise UpstreamError(
            502 if _is_connect(exc) else 504,
            f"upstream {url} {what} within the timeout ({type(exc).__name__})",
            retryable=_is_connect(exc),
        ) from exc
    except httpx.ConnectError as exc:
        raise UpstreamError(502, f"upstream {url} is unreachable: {exc}", retryable=True) from exc
    except httpx.HTTPError as exc:
        message = f"upstream {url} broke off the response: {type(exc).__name__}: {exc}"
        raise UpstreamError(502, message) from exc
    raise UpstreamError(502, f"upstream {url} ended the stream without `data: [DONE]`")


def _is_connect(exc: httpx.TimeoutException) -> bool:
    return isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout)


async def _status_error(url: str, response: httpx.Response) -> UpstreamError:
    """A non-200 answer: the upstream's own message, its 4xx or 503 status, else 502."""
    text = (await response.aread()).decode("utf-8", "replace")
    try:
        message = str(json.loads(text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        message = text.strip()[:300] or response.reason_phrase
    status = response.status_code
    client_status = status if 400 <= status < 500 or status == 503 else 502  # 3xx: 502
    return UpstreamError(client_status, f"upstream {url} answered {status}: {message}")


def parse_chunk(url: str, payload: str) -> Chunk:
    """One `data:` payload: a text_completion chunk, a usage-only chunk, or an error object."""
    try:
        data = json.loads(payload)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        if "error" in data:
            error = data["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise UpstreamError(502, f"upstream {url} failed mid-stream: {message}")
        choices, usage = data.get("choices") or [], data.get("usage") or {}
        choice = choices[0] if choices else {}
        return Chunk(
            text=str(choice.get("text") or ""),
            finish_reason=choice.get("finish_reason"),
            num_prompt_tokens=_count(usage.get("prompt_tokens")),
            num_output_tokens=_count(usage.get("completion_tokens")),
        )
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        message = f"upstream {url} sent a malformed chunk ({exc}): {payload[:200]!r}"
        raise UpstreamError(502, message) from exc


def _count(value: object) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None


def finish_reason_of(url: str, reason: str | None) -> FinishReason:
    """Our finish reason for the upstream's; UpstreamError if it ended without one or failed."""
    if reason is None:
        raise UpstreamError(502, f"upstream {url} ended the stream without a finish reason")
    if reason in ("abort", "error"):
        raise UpstreamError(502, f"upstream {url} ended the request with {reason!r}")
    return "length" if reason == "length" else "stop"
