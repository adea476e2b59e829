"""Train / calibration / test splits by prompt, never by row (docs/predictors.md, "Calibration").

Rows that share a prompt id (the same prompt answered by several models) always land in the
same split, so calibration and test see only prompts the learner never saw. Deterministic for
a given seed: prompt ids are sorted before the seeded permutation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from predictors.base import IntArray, LengthSamples


def split_by_prompt(
    samples: LengthSamples, fractions: Sequence[float], seed: int
) -> tuple[IntArray, ...]:
    """Row indices (ascending) of each split; split j gets ~fractions[j] of the prompt ids."""
    if not fractions or any(not f > 0.0 for f in fractions):
        raise ValueError(f"split fractions must be positive, got {list(fractions)}")
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-9):
        raise ValueError(f"split fractions must sum to 1, got {sum(fractions)}")
    ids = sorted(set(samples.prompt_ids))
    order = np.random.default_rng(seed).permutation(len(ids))
    cuts = np.round(np.cumsum(fractions) * len(ids)).astype(np.int64)
    split_of_position = np.searchsorted(cuts, np.arange(len(ids)), side="right")
    split_of_id = {ids[p]: int(split_of_position[rank]) for rank, p in enumerate(order)}
    row_split = np.fromiter((split_of_id[p] for p in samples.prompt_ids), np.int64, len(samples))
    return tuple(np.flatnonzero(row_split == j).astype(np.int64) for j in range(len(fractions)))
