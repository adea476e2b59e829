"""A tiny random Llama for the tests that run the hf engine (built in the test, nothing is
downloaded), a loop driver, and seeded request sets with their undisturbed greedy tokens.
torch, transformers and tokenizers are imported inside the functions: callers skip first."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from service.protocol import GenerationRequest
from service.settings import Settings
from service.worker.engine_host import build_loop, waiting_request

WORDS = [f"w{i}" for i in range(60)]
SPECIALS = ["[UNK]", "<s>", "</s>"]


def build_model(path: Path) -> None:
    """A WordLevel tokenizer (BOS added on encode) and a 2-layer random Llama, saved to `path`."""
    import tokenizers
    import torch
    import transformers

    vocab = {token: i for i, token in enumerate(SPECIALS + WORDS)}
    raw = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    raw.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", 1)]
    )
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=raw, unk_token="[UNK]", bos_token="<s>", eos_token="</s>"
    )
    fast.save_pretrained(path)
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(config)
    model.save_pretrained(path)


def run(
    engine: Any,
    cfg: Settings,
    requests: list[GenerationRequest],
    chunk_tokens: int | None = None,
) -> tuple[dict[str, list[int]], dict[str, str], int]:
    """Drive a real SchedulingLoop as the worker does; each request's output tokens (under
    restart preemption: those of its final run). `chunk_tokens` turns on chunked prefill (the
    loop's max_num_batched_tokens)."""
    loop, _ = build_loop(cfg, engine)
    loop.max_num_batched_tokens = chunk_tokens
    tokens: dict[int, list[int]] = {i: [] for i in range(len(requests))}
    reasons: dict[int, str] = {}
    num_evicted = 0
    for i, r in enumerate(requests):
        engine.add(i, r)
        loop.add_request(waiting_request(r, i))
    while loop.has_work:
        outcome = loop.step(time.time())
        for loop_id in outcome.evicted:
            num_evicted += 1
            if cfg.preemption == "restart":
                tokens[loop_id] = []
            if loop_id not in loop.running:
                engine.release(loop_id, forget=False)
        for loop_id, token_id in outcome.tokens.items():
            tokens[loop_id].append(token_id)
        for loop_id in outcome.finished:
            reasons[loop_id] = outcome.finish_reasons[loop_id]
            engine.release(loop_id, forget=True)
    names = [r.request_id for r in requests]
    return (
        {n: tokens[i] for i, n in enumerate(names)},
        {n: reasons[i] for i, n in enumerate(names)},
        num_evicted,
    )


def random_requests(
    n: int, *, seed: int, prefix: str, max_extra_words: int, min_tokens: int, spread: int
) -> list[GenerationRequest]:
    """`n` distinct prompts (BOS + 3 .. 3 + max_extra_words - 1 words of the tiny vocabulary),
    `min_tokens` .. `min_tokens + spread - 1` output tokens each, ignore_eos."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = rng.integers(3, 63, size=3 + i % max_extra_words).tolist()
        max_tokens = min_tokens + i % spread
        out.append(
            GenerationRequest(
                f"{prefix}{i}",
                (1, *words),
                max_tokens=max_tokens,
                lo=1,
                hi=max_tokens,
                ignore_eos=True,
            )  # fmt: skip
        )
    return out


def undisturbed_tokens(
    settings: Settings, requests: list[GenerationRequest]
) -> dict[str, list[int]]:
    """Greedy tokens of every request, all run in one in-process loop with room for all."""
    from service.engines.hf import HFEngine

    roomy = settings.model_copy(update={"kv_tokens": 20_000, "max_batch_size": 256})
    tokens, _, num_evicted = run(HFEngine(roomy, 0, device="cpu"), roomy, requests)
    assert num_evicted == 0
    return tokens
