"""Lossless failover with real spawned workers: SIGKILL one of two workers with 200 requests in
flight, about half of them streaming; every request completes, and every client stream holds
exactly the tokens of an undisturbed run (none twice, none missing), on the sim and hf engines.

The dead worker's requests resume on the survivor (or on the restarted worker) from their
prompt plus the tokens already streamed, prefilled again there (no KV transfer). Every wait is
bounded by asyncio.wait_for, so a hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.engines.sim import EOS_TOKEN_ID, output_length, placeholder_tokens, request_seed
from service.metrics import Metrics
from service.pool.pool import WorkerPool
from service.protocol import GenerationRequest, TokenEvent, WorkerStats
from service.settings import Settings
from tests.service.pool_support import check_streams, collect, eventually, run

NUM_REQUESTS = 200


class Recorder(Metrics):
    """The app's real metrics, keeping every worker report as well."""

    def __init__(self) -> None:
        super().__init__("failover-test")
        self.reports: list[WorkerStats] = []

    def observe_worker(self, stats: WorkerStats, policy: str) -> None:
        super().observe_worker(stats, policy)
        self.reports.append(stats)


def kill_one_under_load(
    pool: WorkerPool, requests: list[GenerationRequest], *, streaming: int, timeout_s: float
) -> tuple[dict[str, list[TokenEvent]], dict[str, int]]:
    """Send `requests`; once `streaming` of them streamed a token, SIGKILL the worker holding
    the most streaming requests. Every request's events, and what the victim held then
    (requests that had streamed, requests that had not)."""
    streamed: dict[str, int] = {}
    held: dict[str, int] = {}

    async def scenario(pool: WorkerPool) -> dict[str, list[TokenEvent]]:
        tasks = [asyncio.create_task(collect(pool, r, streamed)) for r in requests]
        await eventually(lambda: len(streamed) >= streaming, timeout_s)
        on: dict[int, set[str]] = {0: set(), 1: set()}
        for rid, pending in pool._pending.items():
            if pending.slot is not None:
                on[pending.slot.worker_id].add(rid)
        victim = max(on, key=lambda w: len(on[w] & set(streamed)))
        held["streaming"] = len(on[victim] & set(streamed))
        held["silent"] = len(on[victim] - set(streamed))
        os.kill(pool.describe()["workers"][victim]["pid"], signal.SIGKILL)
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
        await eventually(pool.is_ready, timeout_s)
        assert [w["restarts"] for w in pool.describe()["workers"]].count(1) == 1
        return {r.request_id: events for r, events in zip(requests, outcomes, strict=True)}

    events: dict[str, list[TokenEvent]] = run(scenario, pool)
    return events, held


# --- sim engine -----------------------------------------------------------------------------


def sim_expected(req: GenerationRequest, seed: int = 0) -> list[int]:
    """The sim engine's tokens for `req` in an undisturbed run."""
    length = output_length(req, seed)
    seeds = np.full(length, request_seed(seed, req.request_id), dtype=np.int64)
    tokens: list[int] = placeholder_tokens(seeds, np.arange(length, dtype=np.int64)).tolist()
    if length < req.max_tokens:
        tokens[-1] = EOS_TOKEN_ID
    return tokens


@pytest.mark.parametrize("preemption", ["resume", "restart"])
def test_sim_sigkill_under_load_completes_every_request_token_exact(preemption: str) -> None:
    # unit cost model at 200x: 5 ms an iteration; amin with wide intervals overcommits 2000 KV
    # tokens a worker, so evictions (resume or restart) happen on top of the failover
    settings = Settings(
        workers=2, predictor="none", policy="amin", cost_model="unit", speedup=200.0,
        kv_tokens=2000, max_batch_size=50, preemption=preemption,
    )  # fmt: skip
    prompts = [tuple(range(5, 5 + 4 + i % 13)) for i in range(NUM_REQUESTS)]
    requests = [
        GenerationRequest(
            f"s{i}",
            prompts[i],
            max_tokens=30 + i % 50,
            lo=1,
            hi=30 + i % 50,
            ignore_eos=i % 4 != 0,  # every 4th: a natural length (EOS) under max_tokens
        )  # fmt: skip
        for i in range(NUM_REQUESTS)
    ]
    metrics = Recorder()
    started = time.monotonic()
    events, held = kill_one_under_load(
        WorkerPool(settings, metrics=metrics), requests, streaming=NUM_REQUESTS // 2, timeout_s=30
    )
    check_streams(events, requests, {r.request_id: sim_expected(r) for r in requests})
    assert held["streaming"] >= 10 and held["silent"] >= 10  # the victim had both kinds
    assert any(e[-1].finish_reason == "stop" for e in events.values())
    # the resumed requests' prompt + streamed tokens were prefilled again on the survivors
    assert sum(s.recomputed_tokens for s in metrics.reports) > 0
    rendered = metrics.render().decode()
    assert "kvsched:recomputed_prompt_tokens_total" in rendered
    # the victim's requests were resubmitted and counted (at most those it held when killed:
    # some may finish between that count and the kill)
    resubmitted = [line for line in rendered.splitlines() if line.startswith(
        "kvsched:request_resubmissions_total")]  # fmt: skip
    assert resubmitted
    assert 0 < float(resubmitted[0].split()[-1]) <= held["streaming"] + held["silent"]
    assert time.monotonic() - started < 60


# --- hf engine ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch", reason="the hf engine needs torch (pip install torch==2.13.0)")
    pytest.importorskip("transformers", reason="the hf engine needs transformers (.[hf])")
    from tests.service.tiny_llama import build_model

    path = tmp_path_factory.mktemp("tiny-llama-failover")
    build_model(path)
    return path


def test_hf_sigkill_under_load_completes_every_request_with_undisturbed_greedy_tokens(
    hf_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the spawned workers share two cores
    fields: dict[str, Any] = {"engine": "hf", "model": str(hf_model), "predictor": "none"}
    settings = Settings(
        **fields, workers=2, policy="fcfs", kv_tokens=4000, max_batch_size=50,
        worker_stall_timeout_s=30.0,
    )  # fmt: skip
    from tests.service.tiny_llama import random_requests, undisturbed_tokens

    # 200 distinct prompts (BOS + 3..9 words), 8..23 tokens each
    requests = random_requests(
        NUM_REQUESTS, seed=7, prefix="h", max_extra_words=7, min_tokens=8, spread=16
    )
    expected = undisturbed_tokens(settings, requests)
    assert len({tuple(t) for t in expected.values()}) > NUM_REQUESTS // 2  # prompts matter
    events, held = kill_one_under_load(
        WorkerPool(settings), requests, streaming=NUM_REQUESTS // 2, timeout_s=60
    )
    check_streams(events, requests, expected)
    assert held["streaming"] >= 5 and held["silent"] >= 5
