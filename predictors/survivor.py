"""Remaining-length re-prediction for running requests (issue 13): the survivor model.

After g generated tokens a request is known to need more than g; the refinement ladder
(`conformal.RefineLadder`) only lifts its hi by a calibrated ratio and raises lo to g + 1, so
the bounds of survivors stop ranking them. `SurvivorModel` re-predicts instead: at each ladder
checkpoint k it gives quantiles of log(L / k) for a request with L > k, from what the scheduler
still has while the request runs: the interval it was admitted with (the base model's
calibrated prompt-only prediction, so the prompt features enter through it) and log k.
Two LightGBM quantile boosters (levels d_lo and 1 - d_hi), pooled over the checkpoints, are
trained on the training rows' survivors; split conformal on the calibration rows' survivors
then gives one offset pair per checkpoint, so at g = k a calibration-exchangeable survivor
misses below lo with probability <= d_lo and above hi with <= d_hi.

For g in [k, 2k) the predicted ratio is applied to g (the ladder's ratio rule): lo = g e^(q_lo -
c_lo), hi = g e^(q_hi + c_hi); below the first checkpoint lo is raised to g + 1 only and hi kept;
from `stop` on, hi = max_tokens. The output depends only on the admitted interval, g and
max_tokens, never on the current interval, so calling it every iteration cannot drift.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import lightgbm as lgb
import numpy as np
from numpy.typing import NDArray

from predictors.base import IntArray
from predictors.conformal import _ROUND_EPS, conformal_offset
from predictors.quantile_model import QuantileConfig

FloatArray = NDArray[np.float64]
SURVIVOR_VERSION: Final = 1  # bump when the feature columns or the target change meaning
FEATURE_NAMES: Final = ("log1p_lo", "log1p_hi", "log_k", "lo_over_k", "hi_over_k")
_CACHE_LIMIT: Final = 200_000  # (lo, hi, k) -> predicted log ratios; cleared when full


def survivor_features(lo: IntArray, hi: IntArray, k: IntArray) -> FloatArray:
    """Feature rows from the admitted interval and the checkpoint (columns `FEATURE_NAMES`)."""
    log_lo = np.log1p(np.asarray(lo, dtype=np.float64))
    log_hi = np.log1p(np.asarray(hi, dtype=np.float64))
    log_k = np.log(np.asarray(k, dtype=np.float64))
    return np.column_stack([log_lo, log_hi, log_k, log_lo - log_k, log_hi - log_k])


@dataclass(frozen=True, slots=True, eq=False)
class SurvivorModel:
    """Boosters for log(L / k) at levels (d_lo, 1 - d_hi) and per-checkpoint conformal offsets."""

    checkpoints: tuple[int, ...]
    c_lo: tuple[float, ...]
    c_hi: tuple[float, ...]
    stop: int
    boosters: tuple[lgb.Booster, lgb.Booster] = field(repr=False)
    _ks: IntArray = field(init=False, repr=False)
    _cache: dict[tuple[int, int, int], tuple[float, float]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ks = np.asarray(self.checkpoints, dtype=np.int64)
        n = len(ks)
        if not n or len(self.c_lo) != n or len(self.c_hi) != n:
            raise ValueError("a survivor model needs checkpoints, one offset pair each")
        if ks[0] < 1 or np.any(np.diff(ks) <= 0) or self.stop <= ks[-1]:
            raise ValueError("survivor checkpoints must be increasing positive, below stop")
        if not all(math.isfinite(v) for v in (*self.c_lo, *self.c_hi)):
            raise ValueError("survivor offsets must be finite")
        for booster in self.boosters:
            if booster.num_feature() != len(FEATURE_NAMES):
                raise ValueError(f"survivor booster has {booster.num_feature()} features")
        object.__setattr__(self, "_ks", ks)
        object.__setattr__(self, "_cache", {})

    def _log_ratios(self, lo: IntArray, hi: IntArray, k: IntArray) -> FloatArray:
        """(n, 2) calibrated-free predictions [q_lo, q_hi] of log(L / k), memoised per row key."""
        keys = list(zip(lo.tolist(), hi.tolist(), k.tolist(), strict=True))
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        if missing:
            if len(self._cache) + len(missing) > _CACHE_LIMIT:
                self._cache.clear()
            rows = np.asarray(missing, dtype=np.int64)
            x = survivor_features(lo[rows], hi[rows], k[rows])
            q = np.column_stack([b.predict(x, num_threads=1) for b in self.boosters])
            q.sort(axis=1)
            for i, (a, b) in zip(missing, q.tolist(), strict=True):
                self._cache[keys[i]] = (float(a), float(b))
        return np.array([self._cache[key] for key in keys], dtype=np.float64).reshape(-1, 2)

    def refine(
        self,
        admitted_lo: IntArray,
        admitted_hi: IntArray,
        lo: IntArray,
        hi: IntArray,
        generated: IntArray,
        max_tokens: IntArray,
    ) -> tuple[IntArray, IntArray]:
        """The survivor interval after `generated` tokens; 1 <= g + 1 <= lo <= hi <= max_tokens
        (both clipped to max_tokens). `lo`/`hi` (the current interval) are used only before the
        first checkpoint (lo raised to g + 1, hi kept) and from `stop` on (hi = max_tokens)."""
        g = np.asarray(generated, dtype=np.int64)
        cap = np.asarray(max_tokens, dtype=np.int64)
        lo_out = np.maximum(np.asarray(lo, dtype=np.int64), g + 1)
        hi_out = np.asarray(hi, dtype=np.int64).copy()
        idx = np.searchsorted(self._ks, g, side="right") - 1
        on = np.flatnonzero((idx >= 0) & (g < self.stop))
        if len(on):
            i = idx[on]
            q = self._log_ratios(
                np.asarray(admitted_lo, dtype=np.int64)[on],
                np.asarray(admitted_hi, dtype=np.int64)[on],
                self._ks[i],
            )
            gf = g[on].astype(np.float64)
            lo_f = gf * np.exp(q[:, 0] - np.asarray(self.c_lo)[i])
            hi_f = gf * np.exp(q[:, 1] + np.asarray(self.c_hi)[i])
            lo_r = np.ceil(np.minimum(lo_f, 1e15) - _ROUND_EPS).astype(np.int64)
            hi_r = np.floor(np.minimum(hi_f, 1e15) + _ROUND_EPS).astype(np.int64)
            lo_out[on] = np.maximum(lo_r, g[on] + 1)
            hi_out[on] = hi_r
        hi_out = np.where(g >= self.stop, cap, hi_out)
        lo_out = np.minimum(lo_out, cap)
        return lo_out, np.maximum(np.minimum(hi_out, cap), lo_out)

    def header(self) -> dict[str, Any]:
        return {
            "version": SURVIVOR_VERSION,
            "features": list(FEATURE_NAMES),
            "checkpoints": list(self.checkpoints),
            "c_lo": list(self.c_lo),
            "c_hi": list(self.c_hi),
            "stop": self.stop,
        }

    def model_strings(self) -> tuple[str, str]:
        return self.boosters[0].model_to_string(), self.boosters[1].model_to_string()

    @classmethod
    def from_parts(cls, header: dict[str, Any], texts: Sequence[str]) -> SurvivorModel:
        if header.get("version") != SURVIVOR_VERSION:
            raise ValueError(f"survivor model version {header.get('version')!r} is not supported")
        if tuple(header["features"]) != FEATURE_NAMES or len(texts) != 2:
            raise ValueError("survivor model features do not match this kvsched")
        lo, hi = (lgb.Booster(model_str=t) for t in texts)
        return cls(
            tuple(int(k) for k in header["checkpoints"]),
            tuple(float(c) for c in header["c_lo"]),
            tuple(float(c) for c in header["c_hi"]),
            int(header["stop"]),
            (lo, hi),
        )


def _stack(
    lo: IntArray, hi: IntArray, y: IntArray, checkpoints: Sequence[int]
) -> tuple[FloatArray, FloatArray, IntArray]:
    """Survivor rows (L > k) for every checkpoint: features, log(L / k), checkpoint index."""
    xs = []
    ts = []
    ids = []
    for j, k in enumerate(checkpoints):
        alive = np.flatnonzero(y > k)
        ks = np.full(len(alive), k, dtype=np.int64)
        xs.append(survivor_features(lo[alive], hi[alive], ks))
        ts.append(np.log(y[alive].astype(np.float64) / k))
        ids.append(np.full(len(alive), j, dtype=np.int64))
    return np.vstack(xs), np.concatenate(ts), np.concatenate(ids)


def fit_survivor(
    train: tuple[IntArray, IntArray, IntArray],
    cal: tuple[IntArray, IntArray, IntArray],
    checkpoints: Sequence[int],
    *,
    d_lo: float,
    d_hi: float,
    seed: int,
    min_survivors: int,
    stop: int,
    config: QuantileConfig | None = None,
) -> SurvivorModel | None:
    """Fit on `train` = (admitted lo, admitted hi, true length) rows, calibrate on `cal`.

    Checkpoints are used from the first while the calibration rows keep >= `min_survivors`
    survivors and finite offsets on both sides (`stop`: where hi becomes max_tokens when all
    of them qualify, the ladder's stop); None when not even the first one qualifies
    (the caller keeps the ladder) or the training rows have no survivor.
    """
    config = config or QuantileConfig()
    cal_lo, cal_hi, cal_y = cal
    kept: list[int] = []
    for k in checkpoints:
        if int(np.sum(cal_y > k)) < min_survivors:
            break
        kept.append(int(k))
    if not kept:
        return None
    x, t, _ = _stack(*train, kept)
    if len(t) < 2 * config.min_data_in_leaf:
        return None
    boosters = []
    for level in (d_lo, 1.0 - d_hi):
        data = lgb.Dataset(x, label=t, params={"verbosity": -1}, free_raw_data=True)
        boosters.append(lgb.train(config.params(level, seed), data, config.num_trees))
    xc, tc, jc = _stack(cal_lo, cal_hi, cal_y, kept)
    q = np.sort(np.column_stack([b.predict(xc, num_threads=1) for b in boosters]), axis=1)
    c_lo: list[float] = []
    c_hi: list[float] = []
    for j in range(len(kept)):
        rows = jc == j
        a = conformal_offset(q[rows, 0] - tc[rows], d_lo)
        b = conformal_offset(tc[rows] - q[rows, 1], d_hi)
        if math.isinf(a) or math.isinf(b):
            break
        c_lo.append(a)
        c_hi.append(b)
    if not c_lo:
        return None
    n = len(c_lo)
    after = [int(k) for k in checkpoints][n:]
    end = after[0] if after else max(stop, kept[-1] + 1)
    return SurvivorModel(tuple(kept[:n]), tuple(c_lo), tuple(c_hi), end, (boosters[0], boosters[1]))
