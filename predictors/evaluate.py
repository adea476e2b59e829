"""Interval-predictor evaluation on held-out prompts (docs/predictors.md).

`evaluate` reports coverage (two-sided and per side, per model and per source), width, the
alpha = lo/hi distribution, Kendall tau of lo and hi, Winkler and pinball scores, and survivor
coverage after `refine` at each ladder checkpoint. True lengths are capped at `max_tokens` (a
real request stops there). Every value is JSON-ready (NaN becomes None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.stats import kendalltau

from predictors.base import IntArray, IntervalPredictor, LengthSamples
from predictors.conformal import LADDER_START
from predictors.model import LengthModel
from predictors.splits import split_by_prompt

FloatArray = NDArray[np.float64]

__all__ = ["evaluate", "pinball", "split_by_prompt", "survivor_report", "winkler"]


def _num(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def pinball(y: FloatArray, q: FloatArray, level: float) -> float:
    """Mean pinball (quantile) loss of predictions `q` at quantile `level`."""
    diff = y - q
    return float(np.mean(np.maximum(level * diff, (level - 1.0) * diff)))


def winkler(y: IntArray, lo: IntArray, hi: IntArray, d: float) -> float:
    """Mean interval score at miss level d: width + (2/d) x the distance outside [lo, hi]."""
    below = np.maximum(lo - y, 0).astype(np.float64)
    above = np.maximum(y - hi, 0).astype(np.float64)
    return float(np.mean((hi - lo) + (2.0 / d) * (below + above)))


def _tau(x: IntArray, y: IntArray) -> float | None:
    if len(y) < 2:
        return None
    return _num(float(kendalltau(x, y).statistic))


def _interval_stats(y: IntArray, lo: IntArray, hi: IntArray) -> dict[str, Any]:
    width = (hi - lo).astype(np.float64)
    alpha = lo / hi
    return {
        "coverage": float(np.mean((lo <= y) & (y <= hi))),
        "miss_below_lo": float(np.mean(y < lo)),
        "miss_above_hi": float(np.mean(y > hi)),
        "mean_width": float(np.mean(width)),
        "median_width": float(np.median(width)),
        "median_alpha": float(np.median(alpha)),
        "alpha_p10": float(np.quantile(alpha, 0.1)),
        "mean_log_ratio": float(np.mean(np.log(hi / lo))),
        "kendall_tau_lo": _tau(lo, y),
        "kendall_tau_hi": _tau(hi, y),
    }


def _coverage_by(labels: Sequence[str], covered: NDArray[np.bool_]) -> dict[str, float]:
    keys = np.asarray(labels, dtype=object)
    return {name: float(np.mean(covered[keys == name])) for name in sorted(set(labels))}


def _default_checkpoints(model: IntervalPredictor, y: IntArray) -> list[int]:
    if isinstance(model, LengthModel):  # the calibrated checkpoints, then where hi = max_tokens
        return [*model.ladder.checkpoints, model.ladder.stop]
    top = int(y.max()) if len(y) else 0
    return [k for k in (LADDER_START << i for i in range(40)) if k < top]


def survivor_report(
    model: IntervalPredictor,
    y: IntArray,
    lo: IntArray,
    hi: IntArray,
    max_tokens: IntArray,
    checkpoints: Sequence[int],
) -> list[dict[str, Any]]:
    """Per checkpoint k, among rows with y > k: coverage after refine(generated=k), and with hi
    kept fixed (lo raised only); median refined width; the share whose hi was already passed;
    Kendall tau of the refined lo and hi against the remaining length y - k. A LengthModel is
    asked as the scheduling loop asks it (`refine_admitted`, with the admitted interval)."""
    rows: list[dict[str, Any]] = []
    for k in checkpoints:
        alive = y > k
        n = int(alive.sum())
        if not n:
            continue
        ys, los, his, caps = y[alive], lo[alive], hi[alive], max_tokens[alive]
        gen = np.full(n, k, dtype=np.int64)
        if isinstance(model, LengthModel):
            lo_k, hi_k = model.refine_admitted(los, his, los, his, gen, caps)
        else:
            lo_k, hi_k = model.refine(los, his, gen, caps)
        fixed_lo = np.minimum(np.maximum(los, k + 1), caps)
        rows.append(
            {
                "k": int(k),
                "n": n,
                "coverage": float(np.mean((lo_k <= ys) & (ys <= hi_k))),
                "coverage_fixed_hi": float(np.mean((fixed_lo <= ys) & (ys <= his))),
                "miss_below_lo": float(np.mean(ys < lo_k)),
                "median_width": float(np.median(hi_k - lo_k)),
                "hi_passed": float(np.mean(his <= k)),
                "kendall_tau_lo": _tau(lo_k, ys - k),
                "kendall_tau_hi": _tau(hi_k, ys - k),
            }
        )
    return rows


def evaluate(
    model: IntervalPredictor,
    samples: LengthSamples,
    *,
    max_tokens: int,
    checkpoints: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Held-out metrics of `model` on `samples` (every request capped at `max_tokens`)."""
    if not len(samples):
        raise ValueError("cannot evaluate on zero samples")
    caps = np.full(len(samples), max_tokens, dtype=np.int64)
    y = np.minimum(samples.output_tokens, caps)
    lo, hi = model.predict(samples.batch(caps))
    d_lo, d_hi = (model.d_lo, model.d_hi) if isinstance(model, LengthModel) else (0.05, 0.05)
    covered = (lo <= y) & (y <= hi)
    log_y = np.log1p(y.astype(np.float64))
    report: dict[str, Any] = {
        "n": len(samples),
        "num_capped": int(np.sum(samples.output_tokens > caps)),
    }
    report.update(_interval_stats(y, lo, hi))
    report["winkler"] = winkler(y, lo, hi, d_lo + d_hi)
    report["pinball_lo"] = pinball(log_y, np.log1p(lo.astype(np.float64)), d_lo)
    report["pinball_hi"] = pinball(log_y, np.log1p(hi.astype(np.float64)), 1.0 - d_hi)
    if isinstance(model, LengthModel):
        q = model.predict_log(samples.batch(caps))
        for column, name, level in ((0, "lo", d_lo), (1, "mid", 0.5), (2, "hi", 1.0 - d_hi)):
            report[f"pinball_raw_{name}"] = pinball(log_y, q[:, column], level)
    report["coverage_by_model"] = _coverage_by(samples.models, covered)
    report["coverage_by_source"] = _coverage_by(samples.sources, covered)
    ks = list(checkpoints) if checkpoints is not None else _default_checkpoints(model, y)
    report["survivors"] = survivor_report(model, y, lo, hi, caps, ks)
    return report
