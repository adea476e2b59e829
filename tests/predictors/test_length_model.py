"""Tests for predictors/model.py: calibrated coverage on held-out prompts, budgets, refinement."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from algorithms.protocols import IntervalRefiner
from predictors.base import IntervalPredictor, PromptBatch
from predictors.evaluate import evaluate
from predictors.model import Kind, fit, training_data_sha256
from predictors.quantile_model import QuantileConfig
from predictors.splits import split_by_prompt
from tests.predictors.synthetic_lengths import (
    HELD_OUT_CAP,
    MODELS,
    dev_samples,
    fitted_model,
    held_out_report,
    held_out_samples,
    make_samples,
)

CAP = HELD_OUT_CAP


@pytest.mark.parametrize("kind", ["quantile", "histogram"])
def test_calibrated_coverage_holds_on_held_out_prompts(kind: Kind) -> None:
    report = held_out_report(kind)
    assert report["coverage"] == pytest.approx(0.90, abs=0.03)
    assert report["miss_below_lo"] == pytest.approx(0.05, abs=0.02)
    assert report["miss_above_hi"] == pytest.approx(0.05, abs=0.02)


def test_uncalibrated_quantile_model_undercovers() -> None:
    """A base model that overfits (200 large trees, the earlier default) undercovers raw; CQR
    widens both sides back to the target. The smaller default overfits less, but CQR still
    has to widen it."""
    big = QuantileConfig(num_trees=200, learning_rate=0.05, num_leaves=31)
    model = fit(dev_samples(), seed=0, config=big, unseen_folds=2)
    calibrated = evaluate(model, held_out_samples(), max_tokens=CAP)
    raw = evaluate(model.uncalibrated(), held_out_samples(), max_tokens=CAP)
    assert raw["coverage"] < 0.86 and raw["coverage"] < calibrated["coverage"] - 0.05
    assert model.offsets.lo > 0.0 and model.offsets.hi > 0.0  # CQR had to widen both sides
    assert calibrated["kendall_tau_lo"] > 0.4 and calibrated["kendall_tau_hi"] > 0.4
    default = held_out_report("quantile")
    assert default["kendall_tau_lo"] > 0.4 and default["kendall_tau_hi"] > 0.4
    assert fitted_model("quantile").offsets.hi > 0.0


def test_separate_budgets_per_side() -> None:
    model = fit(dev_samples(), kind="histogram", d_lo=0.02, d_hi=0.12, seed=0)
    report = evaluate(model, held_out_samples(), max_tokens=CAP)
    assert report["miss_below_lo"] == pytest.approx(0.02, abs=0.015)
    assert report["miss_above_hi"] == pytest.approx(0.12, abs=0.025)


def test_mondrian_calibrates_each_target_model() -> None:
    model = fitted_model("quantile", mondrian=True)
    assert [name for name, _, _ in model.offsets.groups] == sorted(MODELS)
    report = held_out_report("quantile", mondrian=True)
    assert report["coverage"] == pytest.approx(0.90, abs=0.03)
    for name, coverage in report["coverage_by_model"].items():
        assert coverage == pytest.approx(0.90, abs=0.05), name


def test_refinement_keeps_survivors_covered_and_lo_below_finished_lengths() -> None:
    model = fitted_model("quantile")
    samples = held_out_samples().take(np.arange(3000))
    caps = np.full(len(samples), CAP)
    y = samples.output_tokens
    lo, hi = model.predict(samples.batch(caps))
    report = held_out_report("quantile")
    ks = [*model.ladder.checkpoints, model.ladder.stop]
    assert [row["k"] for row in report["survivors"]] == ks[: len(report["survivors"])]
    for row in report["survivors"]:
        if row["n"] >= 500:
            assert row["coverage"] >= 0.87, row
    for k in (*model.ladder.checkpoints, 12, 100, 3000, 5000):
        alive = y > k
        lo_k, hi_k = model.refine(lo[alive], hi[alive], np.full(alive.sum(), k), caps[alive])
        assert np.all(lo_k >= k + 1) and np.all(hi_k >= hi[alive])
        # raising lo to k + 1 never creates a miss: lo_k > y only where the prediction missed
        assert np.all((lo_k <= y[alive]) | (lo[alive] > y[alive]))


def test_predictions_respect_every_cap() -> None:
    model = fitted_model("quantile")
    samples = held_out_samples().take(np.arange(600))
    caps = np.random.default_rng(0).integers(1, 3000, size=600)
    caps[:5] = 1
    lo, hi = model.predict(samples.batch(caps))
    assert lo.dtype == hi.dtype == np.int64
    assert np.all((1 <= lo) & (lo <= hi) & (hi <= caps))
    assert np.all(lo[:5] == 1) and np.all(hi[:5] == 1)
    gen = np.random.default_rng(1).integers(1, 4000, size=600)
    lo_k, hi_k = model.refine(lo, hi, gen, caps)
    assert np.all((1 <= lo_k) & (lo_k <= hi_k) & (hi_k <= caps))


def test_unknown_model_and_empty_batch() -> None:
    model: IntervalPredictor = fitted_model("quantile")
    refiner: IntervalRefiner = fitted_model("quantile")
    batch = PromptBatch(
        ("Write an essay about rivers.",), np.array([7]), ("new-model",), np.array([900])
    )
    lo, hi = model.predict(batch)
    assert 1 <= lo[0] <= hi[0] <= 900
    empty = PromptBatch((), np.zeros(0, np.int64), (), np.zeros(0, np.int64))
    assert [len(a) for a in model.predict(empty)] == [0, 0]
    none = np.zeros(0, np.int64)
    assert [len(a) for a in refiner.refine(none, none, none, none)] == [0, 0]


def test_fit_is_deterministic_and_splits_by_prompt() -> None:
    samples = make_samples(300, seed=5)
    config = QuantileConfig(num_trees=20)
    first = fit(samples, seed=3, config=config)
    second = fit(samples.take(np.arange(len(samples))[::-1].copy()), seed=3, config=config)
    batch = samples.batch(CAP)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(first.predict(batch), second.predict(batch), strict=True)
    )
    assert first.info.num_train + first.info.num_cal == len(samples)
    assert first.info.num_cal % len(MODELS) == 0  # whole prompts, never single rows
    train, cal = split_by_prompt(samples, (0.75, 0.25), 3)
    assert len(cal) == first.info.num_cal


def test_training_hash_ignores_row_order_but_not_lengths() -> None:
    samples = make_samples(50, seed=6)
    digest = training_data_sha256(samples)
    assert training_data_sha256(samples.take(np.arange(len(samples))[::-1].copy())) == digest
    changed = dataclasses.replace(samples, output_tokens=samples.output_tokens + 1)
    assert training_data_sha256(changed) != digest


@pytest.mark.parametrize(
    "kwargs",
    [{"d_lo": 0.6}, {"d_hi": 0.0}, {"kind": "forest"}, {"cal_fraction": 1.0}],
)
def test_fit_rejects_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        fit(make_samples(40, seed=7), **kwargs)  # type: ignore[arg-type]


def test_fit_rejects_too_few_calibration_rows() -> None:
    with pytest.raises(ValueError, match="too few"):
        fit(make_samples(8, seed=8), kind="histogram")
