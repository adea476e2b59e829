"""The shipped default model, on the real corpus's documented held-out prompts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from predictors.datasets import load_samples
from predictors.default import load_predictor, split_train_test
from predictors.evaluate import evaluate

CORPUS = Path(__file__).resolve().parents[2] / "data/text/lengths.jsonl.gz"


def test_default_model_is_calibrated_on_held_out_prompts() -> None:
    """Coverage within 3 points of the 90% target; the raw quantile model covers less (the
    small-tree default of issue 13 overfits far less than the earlier 200-tree model, whose raw
    coverage was 8+ points short, but CQR still has to widen both sides)."""
    test = split_train_test(load_samples(CORPUS))[1]
    model = load_predictor("default")
    calibrated = evaluate(model, test, max_tokens=4096)
    raw = evaluate(model.uncalibrated(), test, max_tokens=4096)
    assert abs(calibrated["coverage"] - 0.90) <= 0.03
    assert raw["coverage"] < calibrated["coverage"] - 0.01
    assert model.offsets.lo > 0.0 and model.offsets.hi > 0.0
    assert calibrated["miss_above_hi"] < 0.08 and calibrated["miss_below_lo"] < 0.08


def test_refinement_never_pushes_lo_past_the_true_length() -> None:
    """For a request alive after k tokens, refine raises lo to k + 1 <= y, never beyond y."""
    test = split_train_test(load_samples(CORPUS))[1]
    model = load_predictor("default")
    y = np.minimum(test.output_tokens, 4096)
    lo, hi = model.predict(test.batch(4096))
    for k in (8, 64, 256):
        alive = y > k
        generated = np.full(int(alive.sum()), k, dtype=np.int64)
        lo_k, hi_k = model.refine(lo[alive], hi[alive], generated, np.full_like(generated, 4096))
        assert np.all(lo_k >= k + 1) and np.all(lo_k <= hi_k)
        assert np.all(lo_k <= np.maximum(lo[alive], y[alive]))
