"""Expected remaining output length of a request, from its interval and the tokens it has made.

A request whose whole output length L is predicted in [lo, hi] and has produced g tokens is
known to need L > g. We model L as spread over [max(lo, g + 1), max(hi, that)] and return
E[L - g | L > g], always >= 1. Two spreads are offered:
- `uniform`: the interval's midpoint. On held-out prompts with the shipped model it ranks
  requests best (Kendall tau 0.33 against the true length, vs 0.31 for log-uniform and 0.32
  for `hi` alone) and is nearly unbiased before generation starts (true / estimate 0.89 in sum),
  which is what the queue order and admission of fresh requests need;
- `loguniform` (density ~ 1/L, the logarithmic mean of the ends): unbiased in log space at
  g = 0 but low in sum (true / estimate 1.27); it tracks survivors better once g is in the
  hundreds.
The default is `uniform` (docs/algorithms.md, "Adaptive shortest-first").
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from algorithms.types import WaitingRequest

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
DISTRIBUTIONS = ("uniform", "loguniform")


def check_distribution(distribution: str) -> str:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    return distribution


def expected_remaining(
    lo: IntArray, hi: IntArray, generated: IntArray, distribution: str = "uniform"
) -> FloatArray:
    """E[L - g | L > g] per row for L spread over [max(lo, g + 1), hi] (arrays aligned).

    `lo`, `hi` and `generated` count the whole output (tokens of earlier runs included). A row
    that outlived its `hi` is expected to need exactly one more token.
    """
    g = np.asarray(generated, dtype=np.float64)
    low = np.maximum(np.asarray(lo, dtype=np.float64), g + 1.0)
    high = np.maximum(np.asarray(hi, dtype=np.float64), low)
    if distribution == "uniform":
        mean = (low + high) / 2.0
    elif distribution == "loguniform":
        wide = high > low
        ratio = np.log(np.where(wide, high / low, 2.0))
        mean = np.where(wide, (high - low) / ratio, low)
    else:
        check_distribution(distribution)
    result: FloatArray = mean - g
    return result


def expected_remaining_one(
    lo: int, hi: int, generated: int, distribution: str = "uniform"
) -> float:
    """`expected_remaining` for one request, without numpy (the waiting-queue key calls it)."""
    low = float(max(lo, generated + 1))
    high = float(max(hi, low))
    if distribution == "uniform":
        mean = (low + high) / 2.0
    elif distribution == "loguniform":
        mean = (high - low) / math.log(high / low) if high > low else low
    else:
        check_distribution(distribution)
    return mean - generated


def waiting_expected_remaining(request: WaitingRequest, distribution: str = "uniform") -> float:
    """Expected tokens a waiting request still needs.

    Its interval counts only what is left after the `resumed` tokens an earlier run kept, so the
    whole-output interval is the shifted one and g = `resumed` (0 for a fresh request).
    """
    kept = request.resumed
    return expected_remaining_one(
        request.interval.lo + kept, request.interval.hi + kept, kept, distribution
    )
