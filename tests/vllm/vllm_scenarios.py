"""Runs every vLLM scenario the tests check and prints one JSON report (runs in the vLLM venv).

Usage: python tests/vllm/vllm_scenarios.py MODEL_DIR REPORT_JSON. Builds the tiny model in
MODEL_DIR if missing.
The main-env tests (test_vllm_scheduler.py) assert on the report; this script only records.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import vllm_harness as h  # noqa: E402
from vllm.v1.request import RequestStatus  # noqa: E402
from vllm_workloads import POLICIES, TIGHT, Job, jobs  # noqa: E402

from service.vllm_ext.config import SchedulerConfigError  # noqa: E402
from service.vllm_ext.scheduler import KvschedScheduler  # noqa: E402


def run(
    model_dir: Path,
    policy: str,
    workload: list[Job],
    setup: h.Setup,
    *,
    pipelined: bool = True,
    before_step: Callable[[int, Any], None] | None = None,
) -> dict[str, Any]:
    os.environ["KVSCHED_POLICY"] = policy
    sched = h.make_scheduler(model_dir, setup, KvschedScheduler)
    arrivals: dict[int, list[Any]] = {}
    for job in workload:
        request = h.make_request(
            job.request_id, list(job.prompt), job.max_tokens, job.xargs, float(job.arrival_step)
        )
        arrivals.setdefault(job.arrival_step, []).append(request)
    progress: dict[str, Any] = {"stale": [], "rows_checked": 0}
    hook = progress_check(progress, before_step)
    trace = h.drive(sched, arrivals, pipelined=pipelined, before_step=hook)
    pool = sched.kv_cache_manager.block_pool
    mirror = sched.kvsched
    return {
        **trace.as_dict(),
        "stats": {k: getattr(sched.kvsched_stats, k) for k in sched.kvsched_stats.__slots__},
        "capacity_tokens": mirror.capacity_tokens,
        "end_free_blocks": pool.get_num_free_blocks(),
        "num_blocks": pool.num_gpu_blocks,
        "end_mirror": [len(mirror.waiting), len(mirror.running)],
        "end_requests": len(sched.requests),
        "progress": progress,
    }


def progress_check(
    record: dict[str, Any], then: Callable[[int, Any], None] | None
) -> Callable[[int, Any], None]:
    """Before each schedule(): the tokens the mirror read at the end of the last step are
    still vLLM's (`Mirror.unread_progress` empty), after arrivals, aborts and outputs."""

    def hook(step: int, sched: Any) -> None:
        if then is not None:
            then(step, sched)
        stale = sched.kvsched.unread_progress()
        if stale:
            record["stale"].append([step, stale])
        record["rows_checked"] += len(sched.kvsched.running)

    return hook


def abort_hook(record: dict[str, Any]) -> Callable[[int, Any], None]:
    """At step 6 abort the newest running request and the last waiting one."""

    def hook(step: int, sched: Any) -> None:
        if step != 6:
            return
        running = [r.request_id for r in sched.running][-1:]
        waiting = [r.request_id for r in sched.waiting if r.request_id not in running][-1:]
        pool = sched.kv_cache_manager.block_pool
        free_before = pool.get_num_free_blocks()
        sched.finish_requests(running + waiting, RequestStatus.FINISHED_ABORTED)
        record.update(
            aborted=running + waiting,
            freed_blocks=pool.get_num_free_blocks() - free_before,
            still_tracked=[i for i in running + waiting if i in sched.kvsched],
            still_in_vllm=[i for i in running + waiting if i in sched.requests],
        )

    return hook


def bad_config(model_dir: Path) -> str:
    os.environ["KVSCHED_POLICY"] = "no-such-policy"
    try:
        h.make_scheduler(model_dir, h.Setup(num_blocks=20), KvschedScheduler)
    except SchedulerConfigError as exc:
        return str(exc)
    return "no error"


def bad_xargs(model_dir: Path) -> dict[str, Any]:
    os.environ["KVSCHED_POLICY"] = "amin"
    sched = h.make_scheduler(model_dir, h.Setup(num_blocks=20), KvschedScheduler)
    good = h.make_request("good", [5, 6, 7], 4, {"kvsched_lo": 2, "kvsched_hi": 4})
    bad = h.make_request("bad", [5, 6, 8], 4, {"kvsched_lo": 9, "kvsched_hi": 3})
    trace = h.drive(sched, {0: [good, bad]}, pipelined=True)
    return {"tokens": trace.tokens, "finish_reasons": trace.finish_reasons}


def main(model_dir: Path, report_path: Path) -> None:
    if not (model_dir / "config.json").exists():
        h.build_model(model_dir)
    report: dict[str, Any] = {"contract": {}, "chunked": {}, "prefix": {}, "abort": {}}
    report["parity"] = {}
    for policy in POLICIES:
        tight = policy in TIGHT
        workload = jobs(1, 14, tight=tight)
        report["contract"][policy] = run(model_dir, policy, workload, h.Setup(num_blocks=20))
        parity_jobs = jobs(2, 12, tight=tight)
        report["parity"][policy] = run(
            model_dir,
            policy,
            parity_jobs,
            h.Setup(num_blocks=20, async_scheduling=False),
            pipelined=False,
        )
        record: dict[str, Any] = {}
        trace = run(
            model_dir, policy, workload, h.Setup(num_blocks=20), before_step=abort_hook(record)
        )
        report["abort"][policy] = {**trace, **record}
    for policy in ("fcfs", "amin", "asf", "sorted-f-c"):
        chunked = h.Setup(num_blocks=24, max_num_seqs=16, max_num_batched_tokens=32)
        report["chunked"][policy] = run(model_dir, policy, jobs(3, 12, tight=True), chunked)
        cached = h.Setup(num_blocks=20, prefix_caching=True)
        shared = jobs(4, 12, shared_prefix=32, tight=True)
        report["prefix"][policy] = run(model_dir, policy, shared, cached)
    report["bad_config"] = bad_config(model_dir)
    report["bad_xargs"] = bad_xargs(model_dir)
    report_path.write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
