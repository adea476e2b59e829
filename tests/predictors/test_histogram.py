"""Tests for predictors/histogram.py: order-statistic ranks, strata and their parents."""

from __future__ import annotations

import numpy as np
import pytest

from predictors.base import PromptBatch
from predictors.features import FeatureSpec
from predictors.histogram import HistogramQuantiles, fit_histogram, order_stat_quantiles


def test_order_stat_quantiles_use_finite_sample_ranks() -> None:
    values = np.arange(1.0, 40.0)  # n = 39: lo rank floor(40 x 0.05) = 2, hi rank 38
    assert order_stat_quantiles(values[::-1].copy(), 0.05, 0.05).tolist() == [2.0, 20.0, 38.0]
    assert order_stat_quantiles(np.array([7.0]), 0.05, 0.05).tolist() == [7.0, 7.0, 7.0]
    with pytest.raises(ValueError):
        order_stat_quantiles(np.zeros(0), 0.05, 0.05)


def _rows() -> tuple[np.ndarray, tuple[str, ...], np.ndarray]:
    """big: 1000 rows, length grows with the prompt; small: 100 rows, always 1000 tokens."""
    rng = np.random.default_rng(0)
    prompt = rng.integers(1, 2000, size=1000)
    big = np.maximum(1, prompt // 2 + rng.integers(0, 20, size=1000))
    tokens = np.concatenate([prompt, rng.integers(1, 2000, size=100)])
    outputs = np.concatenate([big, np.full(100, 1000)])
    return tokens, ("big",) * 1000 + ("small",) * 100, outputs


def _predict(model: HistogramQuantiles, tokens: list[int], models: list[str]) -> np.ndarray:
    n = len(tokens)
    batch = PromptBatch(("",) * n, np.array(tokens), tuple(models), np.full(n, 10**6))
    return np.expm1(model.predict_log(batch))


def test_strata_follow_prompt_length_and_merge_small_ones_into_parents() -> None:
    tokens, models, outputs = _rows()
    spec = FeatureSpec.for_models(models)
    model = fit_histogram(spec, tokens, models, outputs, d_lo=0.05, d_hi=0.05, num_bins=4)
    assert len(model.edges) == 3
    q = _predict(model, [10, 1900, 10, 1900, 10], ["big", "big", "small", "small", "?"])
    assert q[0, 2] < 300 < q[1, 0]  # big's (model, bin) strata have >= 200 rows each
    # small (100 rows) -> its parent, the length bin over all models; unknown -> the same
    assert np.allclose(q[2], q[4])
    assert q[2, 1] < 300 < q[3, 1]  # the parent still follows prompt length
    assert np.all(q[:, 0] <= q[:, 1]) and np.all(q[:, 1] <= q[:, 2])


def test_model_with_enough_rows_but_thin_bins_uses_its_own_pool() -> None:
    tokens, models, outputs = _rows()
    tokens = np.concatenate([tokens, np.full(300, 5)])
    models = models + ("steady",) * 300
    outputs = np.concatenate([outputs, np.full(300, 77)])
    spec = FeatureSpec.for_models(models)
    model = fit_histogram(spec, tokens, models, outputs, d_lo=0.05, d_hi=0.05, num_bins=4)
    q = _predict(model, [1900], ["steady"])  # no steady row is that long: model-level pool
    assert np.allclose(q, 77.0)


def test_histogram_json_round_trip_and_shape_check() -> None:
    tokens, models, outputs = _rows()
    spec = FeatureSpec.for_models(models)
    model = fit_histogram(spec, tokens, models, outputs, d_lo=0.1, d_hi=0.02)
    again = HistogramQuantiles.from_json(spec, model.to_json())
    assert again.edges == model.edges and np.array_equal(again.table, model.table)
    with pytest.raises(ValueError):
        HistogramQuantiles(spec, model.edges, model.table[:, :-1])
