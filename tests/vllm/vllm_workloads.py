"""Workloads shared by the vLLM-side scenario runner and the main-env tests (pure Python).

Every request ignores EOS, so it finishes with exactly `max_tokens` output tokens: its true
output length. Intervals [lo, hi] contain it. Seeded `random.Random` only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

BLOCK_SIZE = 16
POLICIES = ("vllm", "fcfs", "sf", "mcsf", "sorted-f", "sorted-f-c", "amax", "amin", "asf")
EVICTING = frozenset({"vllm", "sf", "amin", "asf"})
# given under-planned intervals (lo = length / 4), so that they must evict
TIGHT = frozenset({"amin", "asf"})


@dataclass(frozen=True, slots=True)
class Job:
    """One request: arrives before engine step `arrival_step`."""

    request_id: str
    arrival_step: int
    prompt: tuple[int, ...]
    max_tokens: int
    lo: int
    hi: int

    @property
    def xargs(self) -> dict[str, int]:
        return {"kvsched_lo": self.lo, "kvsched_hi": self.hi}


def jobs(
    seed: int, count: int, *, max_prompt: int = 60, shared_prefix: int = 0, tight: bool = False
) -> list[Job]:
    """`count` requests over the first steps. `tight`: lo = true length / 4 (A_min then
    under-plans and must evict); otherwise lo is close to the true length."""
    rng = random.Random(seed)
    prefix = tuple(rng.randrange(3, 300) for _ in range(shared_prefix))
    out = []
    for i in range(count):
        prompt = prefix + tuple(rng.randrange(3, 300) for _ in range(rng.randrange(4, max_prompt)))
        length = rng.randrange(4, 48)
        lo = max(1, length // 4) if tight else max(1, length - rng.randrange(0, 4))
        hi = length + rng.randrange(0, 12)
        out.append(Job(f"r{i}", rng.randrange(0, 6), prompt, length, lo, hi))
    return out
