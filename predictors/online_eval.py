"""Evaluate a model the way the server experiences it: online recalibration over a replay.

`evaluate_online` predicts every row in data order with an `OnlineCalibrator` on top of the
model, and lets each row's completion update the calibrator before the next row is predicted
(`predictors.online.replay`). The report has the keys of `predictors.evaluate` computed over the
replayed stream (coverage, misses per side, width, alpha, Kendall tau of lo and hi, Winkler),
the same keys over the rows after the first `warmup` completions, the final adjustments, and
coverage per consecutive block of rows (how fast it converges).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from predictors.base import IntArray, IntervalPredictor, LengthSamples
from predictors.evaluate import _interval_stats, winkler
from predictors.online import (
    DEFAULT_STEP,
    DEFAULT_WINDOW,
    OnlineCalibrator,
    OnlinePredictor,
    budgets_of,
)
from predictors.online import replay as replay_stream

WARMUP = 200  # completions before the "after warm-up" numbers start
BLOCK = 100  # rows per block of the convergence curve


def _stats(y: IntArray, lo: IntArray, hi: IntArray, d: float) -> dict[str, Any]:
    if not len(y):
        return {"n": 0}
    return {"n": len(y), **_interval_stats(y, lo, hi), "winkler": winkler(y, lo, hi, d)}


def evaluate_online(
    model: IntervalPredictor,
    samples: LengthSamples,
    *,
    max_tokens: int,
    step: float = DEFAULT_STEP,
    window: int = DEFAULT_WINDOW,
    warmup: int = WARMUP,
    calibrator: OnlineCalibrator | None = None,
) -> dict[str, Any]:
    """Replay `samples` in order through `model` + online recalibration (see module doc).

    `calibrator` (fresh by default) is updated in place, so a caller can save it afterwards.
    """
    if not len(samples):
        raise ValueError("cannot evaluate on zero samples")
    d_lo, d_hi = budgets_of(model)
    calibrator = calibrator or OnlineCalibrator(d_lo, d_hi, step=step, window=window)
    online = OnlinePredictor(model, calibrator)
    caps = np.full(len(samples), max_tokens, dtype=np.int64)
    base_lo, base_hi = online.base_intervals(samples.batch(caps))
    lo, hi = replay_stream(calibrator, base_lo, base_hi, samples.output_tokens, caps)
    y = np.minimum(samples.output_tokens, caps)
    d = d_lo + d_hi
    report: dict[str, Any] = {
        **_stats(y, lo, hi, d),
        "num_capped": int(np.sum(samples.output_tokens > caps)),
    }
    after = slice(warmup, None)
    report["after_warmup"] = {"warmup": warmup, **_stats(y[after], lo[after], hi[after], d)}
    covered = (lo <= y) & (y <= hi)
    blocks = []
    for start in range(0, len(y), BLOCK):
        part = slice(start, start + BLOCK)
        blocks.append(
            {
                "start": start,
                "n": len(y[part]),
                "coverage": float(np.mean(covered[part])),
                "miss_below_lo": float(np.mean(y[part] < lo[part])),
                "miss_above_hi": float(np.mean(y[part] > hi[part])),
            }
        )
    report["blocks"] = blocks
    report["calibrator"] = {"step": calibrator.step, "window": calibrator.window}
    report["calibrator"].update(calibrator.summary())
    return report
