"""Worker roles vs the stall watchdog, with real spawned sim workers: a hand-over is not a hang.

Every wait is bounded by asyncio.wait_for, so a hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import asyncio

from service.pool.pool import WorkerPool
from tests.service.pool_support import collect, run
from tests.service.test_roles import request, settings


def test_a_decode_worker_waiting_for_kv_longer_than_the_stall_timeout_is_not_killed() -> None:
    # unit cost model at speedup 10: 0.1 s an iteration; the hand-over of 13 KV tokens takes
    # 13 x 1 s / 10 = 1.3 s, during which the decode worker holds the request and computes nothing
    fields = {"workers": 2, "prefill_workers": 1, "worker_stall_timeout_s": 0.5}
    pool = WorkerPool(settings(**fields, speedup=10.0, kv_transfer_ms_per_token=1000.0))

    async def scenario(pool: WorkerPool) -> None:
        events = await asyncio.wait_for(collect(pool, request("t", 3, ignore_eos=True)), 20)
        final = events[-1]
        assert (final.finish_reason, final.error, final.num_output_tokens) == ("length", None, 3)
        assert [w["restarts"] for w in pool.describe()["workers"]] == [0, 0]

    run(scenario, pool)
