"""Worker roles with real spawned sim workers: a WAA pool (prefill + decode workers) streams the
same tokens as mixed workers, hands the KV over instead of prefilling twice, reports roles, and
loses nothing when a prefill or a decode worker is SIGKILLed under load.

Every wait is bounded by asyncio.wait_for, so a hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from service.engines.sim import output_length
from service.metrics import Metrics
from service.pool.pool import WorkerPool
from service.protocol import GenerationRequest, TokenEvent, WorkerStats
from service.settings import Settings
from simulator.traces import load_trace
from tests.service.pool_support import collect, eventually, run

PROMPT = tuple(range(5, 17))
# GeneratedTokens of the tiny trace the sim engine draws output lengths from: 1 = EOS first
LENGTHS = (1, 1, 2, 3, 9, 40)


class Recorder(Metrics):
    """The app's real metrics, keeping every worker report as well."""

    def __init__(self) -> None:
        super().__init__("roles-test")
        self.reports: list[WorkerStats] = []

    def observe_worker(self, stats: WorkerStats, policy: str) -> None:
        super().observe_worker(stats, policy)
        self.reports.append(stats)


@pytest.fixture
def lengths_trace(tmp_path: Path) -> Path:
    path = tmp_path / "lengths.csv"
    rows = [f"2023-11-16 18:17:0{i}.0000000,12,{n}" for i, n in enumerate(LENGTHS)]
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "\n".join(rows) + "\n")
    return path


def settings(**overrides: Any) -> Settings:
    # the unit cost model: one iteration = 1 s / speedup (+ the hand-over, 0 unless given)
    fields: dict[str, Any] = {
        "workers": 2,
        "predictor": "none",
        "policy": "vllm",
        "cost_model": "unit",
        "speedup": 1000.0,
        "kv_tokens": 20_000,
        "kv_transfer_ms_per_token": 0.0,
    }
    return Settings(**(fields | overrides))


def request(
    request_id: str, max_tokens: int = 60, *, ignore_eos: bool = False
) -> GenerationRequest:
    return GenerationRequest(
        request_id, PROMPT, max_tokens=max_tokens, lo=1, hi=max_tokens, ignore_eos=ignore_eos
    )


def mixed_requests() -> list[GenerationRequest]:
    """EOS at the first token, max_tokens 1, short and long outputs, ignore_eos or not."""
    reqs = [request(f"e{i}") for i in range(24)]
    reqs += [request(f"one{i}", 1, ignore_eos=i % 2 == 0) for i in range(4)]
    reqs += [request(f"L{i}", 30 + i, ignore_eos=True) for i in range(6)]
    return reqs


def serve_all(pool: WorkerPool, reqs: list[GenerationRequest]) -> dict[str, list[TokenEvent]]:
    async def scenario(pool: WorkerPool) -> dict[str, list[TokenEvent]]:
        done = await asyncio.wait_for(asyncio.gather(*(collect(pool, r) for r in reqs)), 30)
        await eventually(lambda: pool.describe()["num_running"] == 0)
        return {r.request_id: events for r, events in zip(reqs, done, strict=True)}

    result: dict[str, list[TokenEvent]] = run(scenario, pool)
    return result


def stream(events: list[TokenEvent]) -> tuple[Any, ...]:
    """What a client sees: tokens, text, and the final event's reason and counts."""
    final = events[-1]
    tokens = tuple(t for e in events for t in e.token_ids)
    text = "".join(e.text for e in events)
    return tokens, text, final.finish_reason, final.num_output_tokens, final.num_prompt_tokens


def test_waa_roles_stream_exactly_what_mixed_workers_stream(lengths_trace: Path) -> None:
    reqs = mixed_requests()
    lengths = load_trace(lengths_trace).output_tokens
    targets = {r.request_id: output_length(r, 0, lengths) for r in reqs}
    assert [r for r in reqs if targets[r.request_id] == 1 and not r.ignore_eos and r.max_tokens > 1]
    mixed = serve_all(WorkerPool(settings(sim_output_lengths=lengths_trace)), reqs)
    metrics = Recorder()
    waa_settings = settings(sim_output_lengths=lengths_trace, workers=3, prefill_workers=1)
    waa = serve_all(WorkerPool(waa_settings, metrics=metrics), reqs)
    for req in reqs:
        events = waa[req.request_id]
        assert [e for e in events if e.finish_reason] == [events[-1]]  # exactly one final
        assert stream(events) == stream(mixed[req.request_id]), req.request_id
        assert events[-1].num_output_tokens == targets[req.request_id]
    assert any(stream(waa[r.request_id])[2] == "stop" for r in reqs)
    by_worker: dict[int, dict[str, int]] = {}
    for stats in metrics.reports:
        mine = by_worker.setdefault(stats.worker_id, {"prompt": 0, "handover": 0, "generated": 0})
        mine["prompt"] += stats.prompt_tokens
        mine["handover"] += stats.handover_tokens
        mine["generated"] += stats.generation_tokens
    handed = [r for r in reqs if targets[r.request_id] > 1]
    # the prefill worker prefilled every prompt and made exactly one token per request
    assert by_worker[0] == {
        "prompt": len(PROMPT) * len(reqs),
        "handover": 0,
        "generated": len(reqs),
    }
    # the decode workers prefilled nothing: they received prompt + 1 KV tokens per hand-over
    decode = [by_worker.get(w, {"prompt": 0, "handover": 0, "generated": 0}) for w in (1, 2)]
    assert sum(d["prompt"] for d in decode) == 0
    assert sum(d["handover"] for d in decode) == (len(PROMPT) + 1) * len(handed)
    assert sum(d["generated"] for d in decode) == sum(targets[r.request_id] - 1 for r in handed)
    assert all(d["handover"] for d in decode)  # both decode workers got work
    text = metrics.render().decode()
    assert 'kvsched:worker_role{model_name="roles-test",role="prefill",worker="0"} 1.0' in text
    assert 'role="decode",worker="2"} 1.0' in text
    assert "kvsched:kv_handover_tokens_total" in text


def test_scheduler_view_lists_each_workers_role() -> None:
    pool = WorkerPool(settings(workers=3, prefill_workers=2, prefill_max_batch_size=4))

    async def scenario(pool: WorkerPool) -> dict[str, Any]:
        done = await asyncio.wait_for(collect(pool, request("one", 5, ignore_eos=True)), 10)
        assert done[-1].finish_reason == "length" and done[-1].num_output_tokens == 5
        return pool.describe()

    view = run(scenario, pool)
    assert [w["role"] for w in view["workers"]] == ["prefill", "prefill", "decode"]
    assert view["prefill_workers"] == 2 and view["num_requests"] == 0
    assert view["preemption"] == "resume"


def test_a_prefill_worker_sigkilled_under_load_loses_no_request() -> None:
    # the prefill worker takes 2 requests an iteration: the rest queue on it
    pool = WorkerPool(
        settings(workers=3, prefill_workers=2, prefill_max_batch_size=2, speedup=50.0)
    )
    reqs = [request(f"k{i}", 20, ignore_eos=True) for i in range(30)]
    streamed: dict[str, int] = {}

    async def scenario(pool: WorkerPool) -> None:
        tasks = [asyncio.create_task(collect(pool, r, streamed)) for r in reqs]
        await eventually(lambda: len(streamed) >= 4)
        on_victim = {rid for rid, p in pool._pending.items() if p.slot and p.slot.worker_id == 0}
        assert on_victim and not on_victim & set(streamed)  # nothing streamed from a prefill one
        os.kill(pool.describe()["workers"][0]["pid"], signal.SIGKILL)
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for events in outcomes:  # all re-submitted and completed, none failed or hung
            assert [e.finish_reason for e in events if e.finish_reason] == ["length"]
            assert sum(len(e.token_ids) for e in events) == 20 == events[-1].num_output_tokens
        await eventually(pool.is_ready)
        assert pool.describe()["workers"][0]["restarts"] == 1

    run(scenario, pool)


def test_a_decode_worker_sigkilled_loses_no_request_and_no_token() -> None:
    # decode workers run 2 requests at a time: handed-over ones wait there after their 1st token
    fields = {"workers": 3, "prefill_workers": 1, "prefill_max_batch_size": 16}
    pool = WorkerPool(settings(**fields, max_batch_size=2, speedup=200.0))
    reqs = [request(f"d{i}", 100, ignore_eos=True) for i in range(16)]
    streamed: dict[str, int] = {}
    tokens: dict[str, list[int]] = {}

    async def scenario(pool: WorkerPool) -> None:
        tasks = [asyncio.create_task(collect(pool, r, streamed)) for r in reqs]
        await eventually(lambda: sum(n > 1 for n in streamed.values()) >= 4)
        on_victim = {rid for rid, p in pool._pending.items() if p.slot and p.slot.worker_id == 1}
        first_only = {rid for rid in on_victim if streamed.get(rid) == 1}
        beyond = {rid for rid in on_victim if streamed.get(rid, 0) > 1}
        os.kill(pool.describe()["workers"][1]["pid"], signal.SIGKILL)
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 30)
        for req, events in zip(reqs, outcomes, strict=True):
            final = events[-1]
            assert [e for e in events if e.finish_reason] == [final]
            assert final.finish_reason == "length" and final.num_output_tokens == 100
            tokens[req.request_id] = [t for e in events for t in e.token_ids]
        assert first_only and beyond  # handed over again / resumed by a decode worker

    run(scenario, pool)
    undisturbed = serve_all(WorkerPool(settings(max_batch_size=2)), reqs)
    for req in reqs:
        assert tokens[req.request_id] == list(stream(undisturbed[req.request_id])[0])
