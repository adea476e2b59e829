"""Tests for predictors/evaluate.py and predictors/splits.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictors.base import IntArray, LengthSamples, PromptBatch
from predictors.evaluate import evaluate, pinball, split_by_prompt, winkler
from tests.predictors.synthetic_lengths import held_out_report, make_samples


def _samples(prompt_ids: list[str], outputs: list[int]) -> LengthSamples:
    n = len(prompt_ids)
    return LengthSamples(
        tuple(f"prompt {p}" for p in prompt_ids),
        tuple(prompt_ids),
        tuple("m" if i % 2 else "n" for i in range(n)),
        ("src",) * n,
        np.full(n, 5, dtype=np.int64),
        np.asarray(outputs, dtype=np.int64),
    )


class FixedInterval:
    """[10, 100] for every request (capped), refine: lo >= k + 1, hi >= 2k."""

    def predict(self, batch: PromptBatch) -> tuple[IntArray, IntArray]:
        n = len(batch)
        hi = np.minimum(np.full(n, 100), batch.max_tokens)
        return np.minimum(np.full(n, 10), hi), hi

    def refine(
        self, lo: IntArray, hi: IntArray, generated: IntArray, max_tokens: IntArray
    ) -> tuple[IntArray, IntArray]:
        new_lo = np.minimum(np.maximum(lo, generated + 1), max_tokens)
        return new_lo, np.minimum(np.maximum(hi, 2 * generated), max_tokens)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=200),
    st.lists(st.floats(0.05, 1.0), min_size=1, max_size=4),
    st.integers(0, 10**6),
)
def test_split_by_prompt_never_shares_a_prompt(
    ids: list[int], weights: list[float], seed: int
) -> None:
    fractions = [w / sum(weights) for w in weights]
    samples = _samples([f"q{i}" for i in ids], [1] * len(ids))
    splits = split_by_prompt(samples, fractions, seed)
    assert sorted(np.concatenate(splits).tolist()) == list(range(len(ids)))
    owners: dict[str, int] = {}
    for j, rows in enumerate(splits):
        for row in rows.tolist():
            assert owners.setdefault(samples.prompt_ids[row], j) == j
    again = split_by_prompt(samples, fractions, seed)
    assert all(np.array_equal(a, b) for a, b in zip(splits, again, strict=True))


def test_split_fractions_count_prompts_not_rows() -> None:
    samples = make_samples(400, seed=1)
    train, cal, test = split_by_prompt(samples, (0.5, 0.25, 0.25), seed=9)
    assert (len(train), len(cal), len(test)) == (1200, 600, 600)  # 6 rows per prompt
    other = split_by_prompt(samples, (0.5, 0.25, 0.25), seed=10)
    assert not np.array_equal(train, other[0])


@pytest.mark.parametrize("fractions", [(0.5, 0.4), (1.2, -0.2), (), (0.0, 1.0)])
def test_split_rejects_bad_fractions(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValueError):
        split_by_prompt(make_samples(5), fractions, 0)


def test_metrics_on_a_known_interval() -> None:
    outputs = [5, 10, 50, 100, 150, 300]  # below, on lo, inside, on hi, above, above (capped)
    report = evaluate(FixedInterval(), _samples(list("abcdef"), outputs), max_tokens=200)
    assert report["n"] == 6 and report["num_capped"] == 1
    assert report["coverage"] == pytest.approx(3 / 6)
    assert report["miss_below_lo"] == pytest.approx(1 / 6)
    assert report["miss_above_hi"] == pytest.approx(2 / 6)
    assert report["mean_width"] == report["median_width"] == 90.0
    assert report["median_alpha"] == report["alpha_p10"] == pytest.approx(0.1)
    assert report["mean_log_ratio"] == pytest.approx(np.log(10.0))
    assert report["kendall_tau_lo"] is None  # constant bounds: tau undefined
    # d = 0.1: width 90 + 20 x (5 below + 50 + 100 above) / 6 rows
    assert report["winkler"] == pytest.approx(90 + 20 * (5 + 50 + 100) / 6)
    assert report["coverage_by_model"] == {"m": pytest.approx(2 / 3), "n": pytest.approx(1 / 3)}
    k32 = next(row for row in report["survivors"] if row["k"] == 32)
    # survivors 50, 100, 150, 200: refined [33, 100] covers 50 and 100; fixed hi the same
    assert (k32["n"], k32["coverage"], k32["coverage_fixed_hi"]) == (4, 0.5, 0.5)
    k64 = next(row for row in report["survivors"] if row["k"] == 64)
    assert (k64["n"], k64["coverage"], k64["hi_passed"]) == (3, 1 / 3, 0.0)  # hi -> 128: 100 only


def test_pinball_and_winkler_formulas() -> None:
    y = np.array([1.0, 2.0, 3.0])
    assert pinball(y, np.full(3, 2.0), 0.9) == pytest.approx((0.1 * 1 + 0 + 0.9 * 1) / 3)
    lo, hi = np.array([2, 2, 2]), np.array([4, 4, 4])
    assert winkler(np.array([1, 3, 6]), lo, hi, 0.5) == pytest.approx(2 + 4 * (1 + 2) / 3)


def test_length_model_report_is_json_ready() -> None:
    report = held_out_report("histogram")
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text)["n"] == report["n"]
    for key in ("pinball_raw_lo", "pinball_raw_mid", "pinball_raw_hi", "pinball_lo", "winkler"):
        assert report[key] > 0.0
    assert report["survivors"][0]["k"] == 8
    assert set(report["coverage_by_source"]) == {f"synthetic/task{t}" for t in range(8)}
