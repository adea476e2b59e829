"""How a vLLM request and vLLM's block pool look to a batch former (docs/vllm.md, "Accounting").

Pure functions, no vLLM import. Key invariant: a former that keeps
sum(view prompt + generated + 1) <= `capacity_tokens` over running requests never needs more
KV blocks than vLLM has. vLLM holds prompt + generated tokens (the token being sampled is
not stored) in whole blocks, so a request of p + g tokens holds at most p + g + block_size - 1
slots: the view adds block_size - 2 tokens to every prompt (whole-block rounding per request).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from algorithms.types import LengthInterval

LO_KEY = "kvsched_lo"
HI_KEY = "kvsched_hi"


def view_prompt_tokens(prompt_tokens: int, block_size: int) -> int:
    """The prompt a former plans with: rounded so its KV bound covers whole blocks."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    return max(1, prompt_tokens + block_size - 2)


def capacity_tokens(
    num_gpu_blocks: int, block_size: int, *, num_kv_groups: int = 1, watermark_blocks: int = 0
) -> int:
    """KV capacity in tokens the former may plan with.

    vLLM's block pool keeps one null block; every KV cache group takes its own blocks from the
    shared pool; vLLM's admission watermark (`watermark_blocks`) is kept out entirely.
    """
    if num_kv_groups < 1:
        raise ValueError("a KV cache config needs at least one group")
    usable = (num_gpu_blocks - 1 - watermark_blocks) // num_kv_groups
    if usable < 1:
        raise ValueError(
            f"{num_gpu_blocks} KV blocks leave no usable block for kvsched "
            f"({num_kv_groups} groups, watermark {watermark_blocks} blocks)"
        )
    return usable * block_size


def interval_from_extra_args(
    extra_args: Mapping[str, Any] | None, max_tokens: int
) -> tuple[LengthInterval, str | None]:
    """The request's predicted output interval from `vllm_xargs`, and a problem, if any.

    Default [1, max_tokens]. `hi` above max_tokens is clipped to it (the hard cap). A value
    that is not a positive integer, or lo > hi, is a problem: the default is used instead and
    the message says why, for the caller to log.
    """
    default = LengthInterval(1, max(1, max_tokens))
    if not extra_args or (LO_KEY not in extra_args and HI_KEY not in extra_args):
        return default, None
    lo_raw = extra_args.get(LO_KEY, 1)
    hi_raw = extra_args.get(HI_KEY, max_tokens)
    for key, value in ((LO_KEY, lo_raw), (HI_KEY, hi_raw)):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            return default, f"{key}={value!r} is not an integer"
        if value < 1:
            return default, f"{key}={value!r} must be >= 1"
    lo, hi = int(lo_raw), min(int(hi_raw), default.hi)
    lo = min(lo, default.hi)
    if lo > hi:
        return default, f"{LO_KEY}={lo_raw!r} > {HI_KEY}={hi_raw!r}"
    return LengthInterval(lo, hi), None


def shift_interval(interval: LengthInterval, kept_tokens: int) -> LengthInterval:
    """What is left of an interval once `kept_tokens` output tokens exist (at least 1)."""
    lo = max(1, interval.lo - kept_tokens)
    return LengthInterval(lo, max(lo, interval.hi - kept_tokens))
