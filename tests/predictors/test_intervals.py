"""Tests for predictors/intervals.py: interval families 1-3, miss noise, parsing errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from predictors.intervals import (
    IntervalFamily,
    IntervalSpec,
    bin_edges,
    make_intervals,
    parse_interval_spec,
)

LENGTHS = np.array([1, 2, 3, 7, 49, 50, 51, 99, 100, 250, 799, 800, 1600, 4000], dtype=np.int64)


def _sample(n: int = 2000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 3000, size=n, dtype=np.int64)


def _check_valid(lo: np.ndarray, hi: np.ndarray, n: int) -> None:
    assert lo.dtype == np.int64 and hi.dtype == np.int64
    assert lo.shape == hi.shape == (n,)
    assert np.all(lo >= 1) and np.all(lo <= hi)


@pytest.mark.parametrize("spec", ["exact", "alpha=0.05", "alpha=0.5", "alpha=1", "bins", "global"])
def test_intervals_contain_true_length_without_miss(spec: str) -> None:
    o = np.concatenate([LENGTHS, _sample()])
    lo, hi = make_intervals(spec, o, seed=3)
    _check_valid(lo, hi, o.size)
    assert np.all((lo <= o) & (o <= hi))


def test_exact_is_true_length() -> None:
    lo, hi = make_intervals("exact", LENGTHS, seed=0)
    assert np.array_equal(lo, LENGTHS) and np.array_equal(hi, LENGTHS)


def test_global_is_sample_min_and_max() -> None:
    o = np.array([7, 3, 90, 12])
    lo, hi = make_intervals("global", o, seed=0)
    assert np.array_equal(lo, [3, 3, 3, 3]) and np.array_equal(hi, [90, 90, 90, 90])


def test_bins_use_doubling_edges() -> None:
    assert bin_edges(1000).tolist() == [1, 50, 100, 200, 400, 800, 1600]
    o = np.array([1, 49, 50, 99, 100, 199, 200, 1599, 1600, 3199, 3200])
    lo, hi = make_intervals("bins", o, seed=0)
    assert lo.tolist() == [1, 1, 50, 50, 100, 100, 200, 800, 1600, 1600, 3200]
    assert hi.tolist() == [49, 49, 99, 99, 199, 199, 399, 1599, 3199, 3199, 6399]


def test_given_returns_trace_columns_and_validates() -> None:
    o = np.array([5, 10])
    lo, hi = make_intervals("given", o, seed=0, given=(np.array([4, 2]), np.array([6, 30])))
    assert lo.tolist() == [4, 2] and hi.tolist() == [6, 30] and lo.dtype == np.int64
    with pytest.raises(ValueError, match="trace has no lo/hi columns"):
        make_intervals("given", o, seed=0)
    with pytest.raises(ValueError, match="1 <= lo <= hi"):
        make_intervals("given", o, seed=0, given=(np.array([4, 9]), np.array([6, 8])))
    with pytest.raises(ValueError, match="shape"):
        make_intervals("given", o, seed=0, given=(np.array([4]), np.array([6])))


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 10**6), min_size=1, max_size=60),
    alpha=st.floats(1e-6, 1.0) | st.sampled_from([1.0, 1 - 1e-16, 1 - 1e-12, 0.5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_alpha_property_contains_and_bounds(lengths: list[int], alpha: float, seed: int) -> None:
    o = np.array(lengths, dtype=np.int64)
    lo, hi = make_intervals(f"alpha={alpha!r}", o, seed=seed)
    _check_valid(lo, hi, o.size)
    assert np.all((lo <= o) & (o <= hi))
    # hi <= ceil(o / alpha): rho >= alpha bounds the widening.
    assert np.all(hi <= np.ceil(o / alpha) + 1)


def test_alpha_ratio_close_to_alpha_on_average() -> None:
    o = np.random.default_rng(1).integers(200, 3000, size=5000)
    for alpha in (0.8, 0.5, 0.3, 0.1):
        lo, hi = make_intervals(f"alpha={alpha}", o, seed=7)
        assert abs(float(np.mean(lo / hi)) - alpha) < 0.01
        # rho ~ U[alpha, 1], so the mean of o / hi is about (1 + alpha) / 2.
        assert abs(float(np.mean(o / hi)) - (1 + alpha) / 2) < 0.02


def test_alpha_one_is_exact() -> None:
    lo, hi = make_intervals("alpha=1", LENGTHS, seed=5)
    assert np.array_equal(lo, LENGTHS) and np.array_equal(hi, LENGTHS)


def test_same_seed_same_arrays_different_seed_differs() -> None:
    o = _sample(500)
    first = make_intervals("alpha=0.3,miss=0.2", o, seed=11)
    again = make_intervals("alpha=0.3,miss=0.2", o, seed=11)
    other = make_intervals("alpha=0.3,miss=0.2", o, seed=12)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[1], other[1])


@pytest.mark.parametrize("spec", ["exact", "alpha=0.5", "bins", "global"])
@pytest.mark.parametrize("miss", [0.1, 0.37, 0.5, 0.9])
def test_miss_fraction_is_exact_and_misses_exclude_true_length(spec: str, miss: float) -> None:
    o = np.concatenate([np.ones(50, dtype=np.int64), LENGTHS, _sample(400)])
    clean_lo, clean_hi = make_intervals(spec, o, seed=4)
    lo, hi = make_intervals(f"{spec},miss={miss}", o, seed=4)
    _check_valid(lo, hi, o.size)
    outside = (o < lo) | (o > hi)
    assert int(outside.sum()) == round(miss * o.size)
    unchanged = ~outside
    assert np.array_equal(lo[unchanged], clean_lo[unchanged])
    assert np.array_equal(hi[unchanged], clean_hi[unchanged])
    above, below = o < lo, o > hi
    assert np.all(lo[above] == o[above] + 1) and np.all(hi[below] == o[below] - 1)
    # Width is kept, except below-shifts that would cross 1 and are clamped to lo = 1.
    width, clean_width = hi - lo, clean_hi - clean_lo
    assert np.all(width[above] == clean_width[above])
    kept = below & (lo > 1)
    assert np.all(width[kept] == clean_width[kept])
    assert np.all(width[below] <= clean_width[below])


def test_miss_splits_about_half_above_half_below() -> None:
    o = np.random.default_rng(2).integers(10, 1000, size=1000)
    lo, hi = make_intervals("exact,miss=0.4", o, seed=9)
    assert int((o < lo).sum()) == 200 and int((o > hi).sum()) == 200


def test_miss_with_length_one_goes_above() -> None:
    o = np.ones(20, dtype=np.int64)
    lo, hi = make_intervals("exact,miss=0.5", o, seed=0)
    assert int((lo == 2).sum()) == 10 and np.all(hi >= lo) and np.all(lo >= 1)


def test_parse_valid_specs() -> None:
    assert parse_interval_spec("exact") == IntervalSpec(IntervalFamily.EXACT)
    assert parse_interval_spec(" Alpha=0.5 , miss=0.1 ") == IntervalSpec(
        IntervalFamily.ALPHA, 0.5, 0.1
    )
    assert parse_interval_spec("miss=0,bins") == IntervalSpec(IntervalFamily.BINS, None, 0.0)


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ("oracle", "unknown family or option 'oracle'"),
        ("", "unknown family"),
        ("alpha=0", "alpha must satisfy 0 < alpha <= 1"),
        ("alpha=1.5", "alpha must satisfy"),
        ("alpha=nan", "alpha must satisfy"),
        ("alpha=abc", "alpha='abc' is not a number"),
        ("alpha", "bad syntax in 'alpha'"),
        ("exact=1", "bad syntax in 'exact=1'"),
        ("exact,miss=1", r"miss must satisfy 0 <= miss < 1"),
        ("exact,miss=-0.1", "miss must satisfy"),
        ("exact,miss", "bad syntax in 'miss'"),
        ("exact,miss=0.1,miss=0.2", "miss given twice"),
        ("exact,bins", "more than one family"),
        ("miss=0.1", "no family given"),
        ("exact,,", "unknown family or option ''"),
    ],
)
def test_parse_errors_are_clear(spec: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        parse_interval_spec(spec)


def test_interval_spec_rejects_alpha_on_other_family() -> None:
    with pytest.raises(ValueError, match="only to the alpha family"):
        IntervalSpec(IntervalFamily.BINS, alpha=0.5)


def test_bad_output_tokens_rejected() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        make_intervals("exact", np.array([3, 0]), seed=0)
    with pytest.raises(ValueError, match="1-D integer array"):
        make_intervals("exact", np.array([3.0, 4.0]), seed=0)
    with pytest.raises(ValueError, match="1-D integer array"):
        make_intervals("exact", np.ones((2, 2), dtype=np.int64), seed=0)


def test_empty_input_gives_empty_arrays() -> None:
    for spec in ("exact", "global", "bins", "alpha=0.5,miss=0.5"):
        lo, hi = make_intervals(spec, np.array([], dtype=np.int64), seed=0)
        assert lo.size == 0 and hi.size == 0 and lo.dtype == np.int64
