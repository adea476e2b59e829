"""Split conformal calibration (CQR, log space) and the refinement ladder (docs/predictors.md).

CQR: per side, the offset is the ceil((n+1)(1-d))-th smallest calibration score, so a fresh
exchangeable request misses below lo with probability <= d_lo and above hi with <= d_hi.
Mondrian: one offset pair per target model with >= min_group calibration rows, else global.
The ladder raises hi for a request still running after k tokens (ratio rule); invariant:
refine is monotone and idempotent (lo >= generated + 1, hi never lowered, hi <= max_tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from predictors.base import IntArray

FloatArray = NDArray[np.float64]
LADDER_START = 8  # first checkpoint; then doubling: 16, 32, 64, ...
MIN_SURVIVORS = 50  # fewer calibration survivors make rho_k little more than their maximum
_ROUND_EPS = 1e-9  # keeps float noise at an exact bound from moving it by one token


def conformal_offset(scores: FloatArray, d: float) -> float:
    """The ceil((n+1)(1-d))-th smallest score; +inf when n is too small for budget d."""
    n = len(scores)
    rank = math.ceil((n + 1) * (1.0 - d))
    if rank > n:
        return math.inf
    return float(np.partition(scores, rank - 1)[rank - 1])


@dataclass(frozen=True, slots=True)
class CqrOffsets:
    """Log-space offsets: lo = expm1(q_lo - c_lo), hi = expm1(q_hi + c_hi); per group optional."""

    lo: float
    hi: float
    groups: tuple[tuple[str, float, float], ...] = ()
    _by_group: dict[str, tuple[float, float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        values = [self.lo, self.hi, *(v for _, a, b in self.groups for v in (a, b))]
        if not all(math.isfinite(v) for v in values):
            raise ValueError("conformal offsets must be finite")
        by_group = {name: (a, b) for name, a, b in self.groups}
        if len(by_group) != len(self.groups):
            raise ValueError("conformal groups must be distinct")
        object.__setattr__(self, "_by_group", by_group)

    def for_models(self, models: Sequence[str]) -> tuple[FloatArray, FloatArray]:
        """(c_lo, c_hi) per request: its model's offsets, or the global ones."""
        if not self.groups:
            return np.full(len(models), self.lo), np.full(len(models), self.hi)
        pairs = [self._by_group.get(m, (self.lo, self.hi)) for m in models]
        table = np.array(pairs, dtype=np.float64).reshape(len(models), 2)
        return table[:, 0], table[:, 1]

    def to_json(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "groups": [list(g) for g in self.groups]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CqrOffsets:
        groups = tuple((str(n), float(a), float(b)) for n, a, b in data["groups"])
        return cls(float(data["lo"]), float(data["hi"]), groups)


def fit_cqr(
    q_lo: FloatArray,
    q_hi: FloatArray,
    log_y: FloatArray,
    *,
    d_lo: float,
    d_hi: float,
    groups: Sequence[str] | None = None,
    min_group: int = 200,
) -> CqrOffsets:
    """Offsets from calibration rows (log1p space); Mondrian per value of `groups` if given."""
    s_lo, s_hi = q_lo - log_y, log_y - q_hi
    c_lo, c_hi = conformal_offset(s_lo, d_lo), conformal_offset(s_hi, d_hi)
    if math.isinf(c_lo) or math.isinf(c_hi):
        need = math.ceil(1.0 / min(d_lo, d_hi)) - 1
        raise ValueError(f"{len(log_y)} calibration rows are too few; need >= {need}")
    per_group: list[tuple[str, float, float]] = []
    if groups is not None:
        labels = np.asarray(groups, dtype=object)
        for name in sorted(set(groups)):
            rows = labels == name
            if int(rows.sum()) >= min_group:
                a, b = conformal_offset(s_lo[rows], d_lo), conformal_offset(s_hi[rows], d_hi)
                per_group.append((name, a, b))
    return CqrOffsets(c_lo, c_hi, tuple(per_group))


def to_interval(
    lo_tokens: FloatArray, hi_tokens: FloatArray, max_tokens: IntArray
) -> tuple[IntArray, IntArray]:
    """Integer interval from real bounds: lo = ceil, hi = floor, then 1 <= lo <= hi <= max_tokens.

    Rounding inward keeps the coverage event exact for integer lengths (y >= 3.2 iff y >= 4);
    crossing bounds drop lo to hi; when max_tokens < lo both become max_tokens.
    """
    cap = max_tokens.astype(np.float64)
    hi_f = np.clip(np.floor(hi_tokens + _ROUND_EPS), 1.0, cap)
    lo_f = np.clip(np.ceil(lo_tokens - _ROUND_EPS), 1.0, cap)
    hi = hi_f.astype(np.int64)
    return np.minimum(lo_f.astype(np.int64), hi), hi


@dataclass(frozen=True, slots=True)
class RefineLadder:
    """Ratio rule: after g >= k tokens (k the largest checkpoint <= g), hi >= ceil(g * rho_k).

    From `stop` generated tokens on, calibration had too few survivors, so hi = max_tokens.
    """

    checkpoints: tuple[int, ...]
    rhos: tuple[float, ...]
    stop: int
    _ks: IntArray = field(init=False, repr=False, compare=False)
    _rhos: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        ks = np.asarray(self.checkpoints, dtype=np.int64)
        rhos = np.asarray(self.rhos, dtype=np.float64)
        if len(ks) != len(rhos) or (len(ks) and (ks[0] < 1 or np.any(np.diff(ks) <= 0))):
            raise ValueError("ladder checkpoints must be increasing positive, one rho each")
        if not np.all(np.isfinite(rhos) & (rhos >= 0.0)):
            raise ValueError("ladder ratios must be finite and >= 0")
        if self.stop < 1 or (len(ks) and self.stop <= ks[-1]):
            raise ValueError("ladder stop must lie beyond the last checkpoint")
        object.__setattr__(self, "_ks", ks)
        object.__setattr__(self, "_rhos", rhos)

    def refine(
        self, lo: IntArray, hi: IntArray, generated: IntArray, max_tokens: IntArray
    ) -> tuple[IntArray, IntArray]:
        """lo >= generated + 1; hi >= ceil(generated * rho); both clipped to max_tokens."""
        g = np.asarray(generated, dtype=np.int64)
        lo_new = np.maximum(lo, g + 1)
        idx = np.searchsorted(self._ks, g, side="right") - 1
        rho = np.where(idx >= 0, self._rhos[np.maximum(idx, 0)] if len(self._ks) else 0.0, 0.0)
        target = np.where(g >= self.stop, np.inf, np.ceil(g * rho))
        cap = np.asarray(max_tokens, dtype=np.int64)
        hi_new = np.minimum(np.maximum(hi, target), cap).astype(np.int64)
        lo_out = np.minimum(lo_new, cap)
        return lo_out, np.maximum(hi_new, lo_out)

    def to_json(self) -> dict[str, Any]:
        return {"checkpoints": list(self.checkpoints), "rhos": list(self.rhos), "stop": self.stop}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RefineLadder:
        ks = tuple(int(k) for k in data["checkpoints"])
        return cls(ks, tuple(float(r) for r in data["rhos"]), int(data["stop"]))


def fit_ladder(
    output_tokens: IntArray,
    d_hi: float,
    *,
    hi: IntArray | None = None,
    start: int = LADDER_START,
    min_survivors: int = MIN_SURVIVORS,
) -> RefineLadder:
    """Calibrate rho_k on rows with y > k, for k = start, 2 start, ... (docs/predictors.md).

    Without `hi`: rho_k is the conformal (1 - d_hi) quantile of y / k (the plain rule).
    With the rows' predicted `hi`: a survivor already covered by its own hi scores 0, so rho_k
    only has to lift the survivors whose hi was too low (same guarantee, much tighter early).
    The ladder stops at the first k with fewer than `min_survivors` calibration rows left.
    """
    y = output_tokens.astype(np.float64)
    covered = np.zeros(len(y), dtype=bool) if hi is None else y <= hi
    checkpoints: list[int] = []
    rhos: list[float] = []
    k = start
    while True:
        alive = y > k
        rho = conformal_offset(np.where(covered[alive], 0.0, y[alive] / k), d_hi)
        if math.isinf(rho) or int(alive.sum()) < min_survivors:
            return RefineLadder(tuple(checkpoints), tuple(rhos), k)
        checkpoints.append(k)
        rhos.append(rho)
        k *= 2
