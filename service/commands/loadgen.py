"""The client side of `kvsched bench`: replay a trace against an OpenAI-compatible server.

Each trace request is sent at its arrival time as a streaming completion (or chat) request for
exactly its `output_tokens` (`max_tokens`, `ignore_eos`), and timed chunk by chunk as
`vllm bench serve` does: TTFT = first content chunk, ITL = gaps between content chunks, E2E =
until the stream ends. Invariant: every request ends as one `RequestResult`, ok or with an error.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import httpx
import numpy as np

from simulator.traces import Trace

Endpoint = Literal["completions", "chat"]
PATHS: Final = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}
TOKENS_PER_WORD: Final = 1.0
# Short, common English words: one token each (with their leading space) in the Llama and GPT
# BPE vocabularies, so a synthetic prompt of n words is about n tokens (TOKENS_PER_WORD).
_WORDS: Final = (
    "the of and to in is was for on that with as it by at from his an were are which this be "
    "has had one not but or have their they all its new after who first also been more two "
    "she would other when there her time can into only over some city made most than may "
    "year part state these many such what where about between so school may up out world"
).split()


@dataclass(frozen=True, slots=True)
class BenchRequest:
    """One request to send `send_s` seconds after the replay starts."""

    index: int
    send_s: float
    prompt: str
    prompt_tokens: int
    output_tokens: int

    def __post_init__(self) -> None:
        if self.send_s < 0 or self.output_tokens < 1 or not self.prompt:
            raise ValueError(f"request {self.index}: bad send time, output length or prompt")


@dataclass(slots=True)
class RequestResult:
    """What one request measured (seconds). `error` is "" when it completed."""

    index: int
    prompt_tokens: int
    expected_tokens: int
    output_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def tpot_s(self) -> float | None:
        """Mean time per output token after the first (None with a single token)."""
        if self.output_tokens < 2:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


def synthetic_prompt(num_tokens: int, rng: np.random.Generator) -> str:
    """About `num_tokens` tokens of random common words (TOKENS_PER_WORD each)."""
    count = max(1, round(num_tokens / TOKENS_PER_WORD))
    return " ".join(_WORDS[i] for i in rng.integers(len(_WORDS), size=count))


def build_requests(trace: Trace, seed: int) -> list[BenchRequest]:
    """The trace's requests, with its prompts or synthetic ones (seeded)."""
    rng = np.random.default_rng(seed)
    start = float(trace.arrival_s[0]) if len(trace) else 0.0
    requests = []
    for i in range(len(trace)):
        tokens = int(trace.prompt_tokens[i])
        text = trace.prompts[i] if trace.prompts is not None else ""
        prompt = text or synthetic_prompt(tokens, rng)
        send_s = max(0.0, float(trace.arrival_s[i]) - start)
        requests.append(BenchRequest(i, send_s, prompt, tokens, int(trace.output_tokens[i])))
    return requests


def request_body(endpoint: Endpoint, model: str, request: BenchRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
    }
    if endpoint == "chat":
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt
    return body


def _content(endpoint: Endpoint, data: dict[str, Any]) -> str | None:
    """The text a chunk carries (None: a chunk without choices, e.g. the usage chunk)."""
    choices = data.get("choices") or []
    if not choices:
        return None
    if endpoint == "chat":
        return str((choices[0].get("delta") or {}).get("content") or "")
    return str(choices[0].get("text") or "")


async def send_one(
    client: httpx.AsyncClient, endpoint: Endpoint, model: str, request: BenchRequest
) -> RequestResult:
    """Stream one request; never raises for server or network failures."""
    result = RequestResult(request.index, request.prompt_tokens, request.output_tokens)
    started = time.perf_counter()
    try:
        body = request_body(endpoint, model, request)
        async with client.stream("POST", PATHS[endpoint], json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                result.error = f"HTTP {response.status_code}: {text[:200]}"
                return result
            await _read_stream(response, endpoint, result, started)
    except (httpx.HTTPError, OSError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    result.e2e_s = time.perf_counter() - started
    return result


async def _read_stream(
    response: httpx.Response, endpoint: Endpoint, result: RequestResult, started: float
) -> None:
    num_chunks = 0
    usage_tokens = None
    done = False
    last = started
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        now = time.perf_counter()
        payload = line[len("data:") :].strip()
        if payload == "[DONE]":
            done = True
            break
        data = json.loads(payload)
        if "error" in data:
            result.error = f"stream error: {data['error'].get('message', data['error'])}"
            return
        if data.get("usage"):
            usage_tokens = data["usage"].get("completion_tokens")
        text = _content(endpoint, data)
        if not text:  # the usage chunk, chat's role chunk, a bare finish_reason chunk
            continue
        if num_chunks == 0:
            result.ttft_s = now - started
        else:
            result.itl_s.append(now - last)
        num_chunks = num_chunks + 1
        last = now
    if not done:
        result.error = "stream ended without [DONE]"
    result.output_tokens = int(usage_tokens) if usage_tokens is not None else num_chunks


async def replay(
    url: str,
    requests: list[BenchRequest],
    *,
    endpoint: Endpoint,
    model: str,
    max_concurrency: int | None = None,
    on_done: Callable[[RequestResult], None] | None = None,
    timeout_s: float = 600.0,
) -> tuple[list[RequestResult], float]:
    """Send every request at its time; return the results (in request order) and the duration."""
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=None)
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        start = time.perf_counter()

        async def one(request: BenchRequest) -> RequestResult:
            await asyncio.sleep(max(0.0, start + request.send_s - time.perf_counter()))
            if limit is None:
                result = await send_one(client, endpoint, model, request)
            else:
                async with limit:
                    result = await send_one(client, endpoint, model, request)
            if on_done is not None:
                on_done(result)
            return result

        results = await asyncio.gather(*(one(r) for r in requests))
        return list(results), time.perf_counter() - start


async def first_model(url: str) -> str:
    """The first model id the server lists at GET /v1/models."""
    async with httpx.AsyncClient(base_url=url, timeout=10.0) as client:
        response = await client.get("/v1/models")
        response.raise_for_status()
        models = response.json().get("data") or []
    if not models:
        raise ValueError(f"{url}/v1/models lists no model; pass --model")
    return str(models[0]["id"])
