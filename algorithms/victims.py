"""Which running requests to evict when the next iteration overflows the KV cache.

Under resume preemption an evicted request keeps its tokens but prefills prompt + generated again
when it comes back: that is what an eviction wastes. What it buys is the KV it holds now plus
the growth it would still add (its expected remaining output). Victims are taken in descending
(held + expected remaining) / (prompt + generated): young requests with a long way to go first,
requests far into a long run last. Limited preemption (after TRAIL): a request that has produced
at least `protect_share` of its predicted length (generated + expected remaining) is evicted
only when the unprotected ones together cannot free enough. Victims are taken until the rest
fit, so the next iteration never exceeds the capacity.
"""

from __future__ import annotations

import numpy as np

from algorithms.remaining import FloatArray
from algorithms.state import IntArray, RunningSet


def check_share(protect_share: float) -> float:
    if not 0.0 < protect_share <= 1.0:
        raise ValueError(f"protect_share must be in (0, 1], got {protect_share}")
    return protect_share


def eviction_order(running: RunningSet, remaining: FloatArray, protect_share: float) -> IntArray:
    """Row indices, the first to evict first (`remaining` aligned with the rows)."""
    wasted = running.prompt_tokens + running.generated
    held = wasted + 1
    score = (held + remaining) / np.maximum(wasted, 1)
    done = (running.resumed + running.generated).astype(np.float64)
    protected = done >= protect_share * (done + remaining)
    # lexsort: last key first; ties go to the most recently started, then the larger id
    order: IntArray = np.lexsort((-running.ids, -running.start_step, -score, protected))
    return order


def choose_victims(
    running: RunningSet, remaining: FloatArray, capacity: int, protect_share: float
) -> IntArray:
    """Rows to evict, in `eviction_order`, until the next iteration fits in `capacity`."""
    overflow = running.next_step_tokens() - capacity
    if overflow <= 0:
        return np.zeros(0, dtype=np.int64)
    order = eviction_order(running, remaining, protect_share)
    freed = np.cumsum((running.prompt_tokens + running.generated + 1)[order])
    count = int(np.searchsorted(freed, overflow, side="left")) + 1
    victims: IntArray = order[:count]
    return victims
