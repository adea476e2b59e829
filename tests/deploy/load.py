"""A small mixed load for the live dashboard test (issue 5): a few dozen requests in waves.

Completions and chat, whole and streamed (SSE read to `[DONE]`), spread over a few seconds so
rate() windows fill, plus requests refused for context length (400) so error panels have data.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

MODEL = "kvsched-sim"
NUM_WAVES, WAVE_SIZE, WAVE_GAP_S = 8, 5, 0.7


@dataclass(frozen=True, slots=True)
class LoadResult:
    num_ok: int
    num_streamed: int
    num_refused: int


def _request(client: httpx.Client, index: int) -> tuple[bool, bool]:
    """(ok, streamed) for one request; the body shape and streaming depend on `index`."""
    max_tokens = 8 + (index * 7) % 33
    stream = index % 2 == 0
    if index % 3 == 0:
        path = "/v1/chat/completions"
        body: dict[str, object] = {"messages": [{"role": "user", "content": f"hello {index}"}]}
    else:
        path, body = "/v1/completions", {"prompt": f"count to {index}"}
    body.update(model=MODEL, max_tokens=max_tokens, stream=stream)
    if not stream:
        return client.post(path, json=body).status_code == 200, False
    with client.stream("POST", path, json=body) as response:
        lines = [line for line in response.iter_lines() if line]
    return response.status_code == 200 and lines[-1] == "data: [DONE]", True


def _refused(client: httpx.Client) -> bool:
    body = {"model": MODEL, "prompt": "too long", "max_tokens": 10**7}
    return client.post("/v1/completions", json=body).status_code == 400


def run_load(url: str) -> LoadResult:
    num_ok = num_streamed = num_refused = 0
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(WAVE_SIZE) as pool:
        for wave in range(NUM_WAVES):
            indices = range(wave * WAVE_SIZE, (wave + 1) * WAVE_SIZE)
            for ok, streamed in pool.map(lambda i: _request(client, i), indices):
                assert ok, "a load request failed"
                num_ok += 1
                num_streamed += streamed
            if wave % 3 == 0:
                num_refused += _refused(client)
            time.sleep(WAVE_GAP_S)
    return LoadResult(num_ok, num_streamed, num_refused)
