"""The worker pool with real spawned sim workers: load, cancel, SIGKILL, graceful stop, bad start.

Each test starts its own pool (about half a second) and runs at a large speed-up; every wait
is bounded by asyncio.wait_for, so a hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from service.engines.sim import output_length
from service.metrics import Metrics
from service.pool.pool import WorkerPool
from service.protocol import GenerationRequest, WorkerStats
from service.settings import Settings
from tests.service.pool_support import collect, eventually, run

PROMPT = tuple(range(5, 15))


class RecordingMetrics(Metrics):
    """The app's real metrics, keeping every worker report (with the policy) as well."""

    def __init__(self) -> None:
        super().__init__("pool-test")
        self.reports: list[tuple[WorkerStats, str]] = []

    def observe_worker(self, stats: WorkerStats, policy: str) -> None:
        super().observe_worker(stats, policy)
        self.reports.append((stats, policy))


def settings(**overrides: Any) -> Settings:
    # the unit cost model: one iteration = 1 s / speedup
    fields: dict[str, Any] = {"workers": 2, "predictor": "none", "cost_model": "unit"}
    return Settings(**(fields | {"speedup": 1000.0, "kv_tokens": 20_000} | overrides))


def request(
    request_id: str, max_tokens: int = 100, *, ignore_eos: bool = True
) -> GenerationRequest:
    return GenerationRequest(
        request_id, PROMPT, max_tokens=max_tokens, lo=1, hi=max_tokens, ignore_eos=ignore_eos
    )


def test_pool_serves_50_concurrent_requests_and_cancel_frees_the_worker() -> None:
    metrics = RecordingMetrics()
    pool = WorkerPool(settings(), metrics=metrics)
    requests = [request(f"r{i}", 20 + 3 * i, ignore_eos=i % 2 == 0) for i in range(50)]

    async def scenario(pool: WorkerPool) -> None:
        assert pool.is_ready()
        done = await asyncio.wait_for(asyncio.gather(*(collect(pool, r) for r in requests)), 20)
        for req, events in zip(requests, done, strict=True):
            final = events[-1]
            expected = output_length(req, 0)
            assert sum(len(e.token_ids) for e in events) == expected == final.num_output_tokens
            assert final.finish_reason == ("length" if expected == req.max_tokens else "stop")
            assert all(e.finish_reason is None for e in events[:-1])
        slow = request("slow", 5000)  # 5 s of iterations at this speed-up
        stream = pool.generate(slow)
        first = await asyncio.wait_for(anext(stream), 5)
        assert first.token_ids and pool.describe()["num_requests"] == 1
        pool.cancel("slow")
        assert (await asyncio.wait_for(anext(stream), 1)).finish_reason == "abort"
        await eventually(lambda: pool.describe()["num_running"] == 0, 2.0)

    run(scenario, pool)
    generated: dict[int, int] = {}
    for stats, policy in metrics.reports:
        assert policy == "asf"
        generated[stats.worker_id] = generated.get(stats.worker_id, 0) + stats.generation_tokens
    assert set(generated) == {0, 1}  # both workers served
    assert sum(generated.values()) >= sum(output_length(r, 0) for r in requests)


def test_sigkill_of_a_worker_under_load_loses_no_request_and_no_token() -> None:
    # amax admits by hi: 10 requests of 10 + 100 tokens run per worker, the rest wait
    pool = WorkerPool(settings(policy="amax", kv_tokens=1200, speedup=200.0))
    requests = [request(f"k{i}") for i in range(40)]
    streamed: dict[str, int] = {}

    async def scenario(pool: WorkerPool) -> None:
        tasks = [asyncio.create_task(collect(pool, r, streamed)) for r in requests]
        await eventually(lambda: len(streamed) >= 15)
        victim = pool.describe()["workers"][0]
        on_victim = {rid for rid, p in pool._pending.items() if p.slot and p.slot.worker_id == 0}
        streaming_on_victim = on_victim & set(streamed)
        os.kill(victim["pid"], signal.SIGKILL)
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        for events in outcomes:  # every request completes: those that streamed resume
            final = events[-1]
            assert [e for e in events if e.finish_reason] == [final]
            assert final.finish_reason == "length" and final.num_output_tokens == 100
            assert sum(len(e.token_ids) for e in events) == 100
        assert streaming_on_victim and on_victim - streaming_on_victim
        await eventually(pool.is_ready)
        assert pool.describe()["workers"][0]["restarts"] == 1
        after = await asyncio.wait_for(collect(pool, request("after", 10)), 5)
        assert after[-1].finish_reason == "length"

    run(scenario, pool)


def test_stop_finishes_in_flight_requests_within_grace_and_fails_the_rest() -> None:
    pool = WorkerPool(settings(workers=1, speedup=200.0))  # 5 ms per iteration

    async def scenario(pool: WorkerPool) -> None:
        short = asyncio.create_task(collect(pool, request("short", 40)))  # ~0.2 s
        long = asyncio.create_task(collect(pool, request("long", 5000)))  # ~25 s
        await eventually(lambda: pool.describe()["num_running"] == 2)
        stopping = asyncio.create_task(pool.stop(grace_s=1.0))
        await asyncio.sleep(0)
        assert not pool.is_ready()
        refused = await collect(pool, request("late", 5))
        assert refused[-1].finish_reason == "error" and "not accepting" in str(refused[-1].error)
        short_events, long_events = await asyncio.wait_for(asyncio.gather(short, long), 5)
        assert short_events[-1].finish_reason == "length"
        assert short_events[-1].num_output_tokens == 40
        assert long_events[-1].finish_reason == "error" and "shut down" in str(
            long_events[-1].error
        )
        await asyncio.wait_for(stopping, 10)
        assert not any(w["alive"] for w in pool.describe()["workers"])

    run(scenario, pool)


def test_a_worker_that_cannot_start_fails_start_with_its_error() -> None:
    pool = WorkerPool(settings(workers=1, predictor="/nonexistent/model.kvp"))
    with pytest.raises(RuntimeError, match=r"worker 0 exited \(exit code 1\).*nonexistent"):
        asyncio.run(asyncio.wait_for(pool.start(), 30))


def test_pool_rejects_a_clairvoyant_policy_up_front() -> None:
    with pytest.raises(ValueError, match="true lengths"):
        WorkerPool(settings(policy="hsf"))


def test_a_hung_worker_is_killed_restarted_and_its_requests_resumed() -> None:
    pool = WorkerPool(settings(kv_tokens=1200, speedup=200.0, worker_stall_timeout_s=1.0))
    requests = [request(f"h{i}") for i in range(20)]
    streamed: dict[str, int] = {}

    async def scenario(pool: WorkerPool) -> None:
        tasks = [asyncio.create_task(collect(pool, r, streamed)) for r in requests]
        await eventually(lambda: len(streamed) >= 5)
        victim = pool.describe()["workers"][0]
        on_victim = {rid for rid, p in pool._pending.items() if p.slot and p.slot.worker_id == 0}
        os.kill(victim["pid"], signal.SIGSTOP)  # alive, holding requests, silent: a hang
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks), 20)
        for events in outcomes:
            final = events[-1]
            assert [e for e in events if e.finish_reason] == [final]
            assert final.finish_reason == "length" and final.num_output_tokens == 100
            assert sum(len(e.token_ids) for e in events) == 100
        assert on_victim & set(streamed)  # the stopped worker held streaming requests
        await eventually(pool.is_ready)
        assert pool.describe()["workers"][0]["restarts"] == 1
        assert pool.describe()["workers"][0]["pid"] != victim["pid"]

    run(scenario, pool)


def test_a_request_fails_once_its_resubmissions_are_used_up() -> None:
    pool = WorkerPool(settings(workers=1, speedup=200.0, max_resubmits=1))
    streamed: dict[str, int] = {}

    async def kill_once_streaming(pool: WorkerPool, count: int) -> None:
        await eventually(lambda: streamed.get("f", 0) > count and pool.is_ready())
        os.kill(pool.describe()["workers"][0]["pid"], signal.SIGKILL)

    async def scenario(pool: WorkerPool) -> None:
        task = asyncio.create_task(collect(pool, request("f", 5000), streamed))
        await kill_once_streaming(pool, 0)
        await kill_once_streaming(pool, streamed["f"])  # it resumed on the restarted worker
        events = await asyncio.wait_for(task, 20)
        final = events[-1]
        assert final.finish_reason == "error" and final.error is not None
        assert "on 2 failed workers" in final.error and "--max-resubmits" in final.error
        assert final.num_output_tokens == sum(len(e.token_ids) for e in events) > 1

    run(scenario, pool)
