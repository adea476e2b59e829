"""Tests for predictors/conformal.py: order statistics, CQR per side, Mondrian, rounding, ladder."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from predictors.conformal import (
    CqrOffsets,
    RefineLadder,
    conformal_offset,
    fit_cqr,
    fit_ladder,
    to_interval,
)

LADDER = RefineLadder((8, 16, 32), (0.0, 3.0, 2.5), 64)


def test_conformal_offset_takes_the_finite_sample_rank() -> None:
    scores = np.arange(1.0, 20.0)[::-1].copy()  # 19 scores: rank ceil(20 * 0.9) = 18
    assert conformal_offset(scores, 0.1) == 18.0
    assert conformal_offset(scores, 0.05) == 19.0  # rank 19 = the maximum
    assert math.isinf(conformal_offset(scores, 0.04))  # rank 20 > n
    assert math.isinf(conformal_offset(np.zeros(0), 0.5))


def _coverage_draw(rng: np.random.Generator, n_cal: int) -> tuple[float, float]:
    """One CQR run on a biased, too-narrow base model; fresh-draw miss rates per side."""
    x = rng.uniform(0.0, 1.0, size=n_cal + 2000)
    log_y = 3.0 + 2.0 * x + rng.normal(0.0, 0.3 + 0.6 * x)
    q_lo, q_hi = 3.2 + 2.0 * x - 0.2, 3.2 + 2.0 * x + 0.2  # biased up, far too narrow
    cal, new = slice(0, n_cal), slice(n_cal, None)
    offsets = fit_cqr(q_lo[cal], q_hi[cal], log_y[cal], d_lo=0.05, d_hi=0.10)
    below = np.mean(log_y[new] < q_lo[new] - offsets.lo)
    above = np.mean(log_y[new] > q_hi[new] + offsets.hi)
    return float(below), float(above)


def test_cqr_gives_each_side_its_own_budget_on_average() -> None:
    rng = np.random.default_rng(1)
    draws = np.array([_coverage_draw(rng, 300) for _ in range(60)])
    below, above = draws.mean(axis=0)
    # split conformal: d - 1/(n+1) <= E[miss] <= d (continuous scores)
    assert 0.05 - 0.01 <= below <= 0.05 + 0.005
    assert 0.10 - 0.01 <= above <= 0.10 + 0.005


def test_mondrian_offsets_per_large_group_and_global_fallback() -> None:
    rng = np.random.default_rng(2)
    groups = ["calm"] * 400 + ["wild"] * 400 + ["rare"] * 50
    spread = np.array([0.2] * 400 + [1.0] * 400 + [0.5] * 50)
    log_y = rng.normal(0.0, spread)
    zeros = np.zeros(len(groups))
    offsets = fit_cqr(zeros, zeros, log_y, d_lo=0.05, d_hi=0.05, groups=groups)
    assert [g[0] for g in offsets.groups] == ["calm", "wild"]
    c_lo, c_hi = offsets.for_models(["calm", "wild", "rare", "unseen"])
    assert c_hi[0] < offsets.hi < c_hi[1]
    assert (c_lo[2], c_hi[2]) == (offsets.lo, offsets.hi) == (c_lo[3], c_hi[3])
    fresh = rng.normal(0.0, 1.0, size=20000)  # the wild group alone: global undercovers it
    assert np.mean(fresh > c_hi[1]) == pytest.approx(0.05, abs=0.02)
    assert np.mean(fresh > offsets.hi) > 0.09


def test_cqr_refuses_too_few_calibration_rows() -> None:
    with pytest.raises(ValueError, match="too few"):
        fit_cqr(np.zeros(10), np.zeros(10), np.zeros(10), d_lo=0.05, d_hi=0.05)


def test_offsets_round_trip_and_validation() -> None:
    offsets = CqrOffsets(0.1, -0.2, (("a", 0.3, 0.4),))
    assert CqrOffsets.from_json(offsets.to_json()) == offsets
    with pytest.raises(ValueError):
        CqrOffsets(math.inf, 0.0)
    with pytest.raises(ValueError):
        CqrOffsets(0.0, 0.0, (("a", 0.0, 0.0), ("a", 1.0, 1.0)))


def test_to_interval_rounds_inward_and_clips() -> None:
    lo, hi = to_interval(
        np.array([3.2, 0.1, 50.0, 7.0, 5.0, 9.0]),
        np.array([10.8, 0.3, np.inf, 7.0, 4.0, 20.0]),
        np.array([100, 100, 100, 100, 100, 6]),
    )
    assert lo.tolist() == [4, 1, 50, 7, 4, 6]  # crossing -> lo drops to hi; cap below lo -> cap
    assert hi.tolist() == [10, 1, 100, 7, 4, 6]
    assert lo.dtype == hi.dtype == np.int64


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, 20, elements=st.floats(-1e3, 1e300, allow_nan=False)),
    arrays(np.float64, 20, elements=st.floats(-1e3, np.inf, allow_nan=False)),
    arrays(np.int64, 20, elements=st.integers(1, 10**6)),
)
def test_to_interval_always_valid(lo_f: np.ndarray, hi_f: np.ndarray, caps: np.ndarray) -> None:
    lo, hi = to_interval(lo_f, hi_f, caps)
    assert np.all((1 <= lo) & (lo <= hi) & (hi <= caps))


def test_ladder_refine_rules() -> None:
    lo = np.array([5, 5, 5, 5, 5, 50, 2])
    hi = np.array([40, 40, 40, 40, 40, 60, 9])
    generated = np.array([3, 10, 20, 40, 70, 45, 9])
    caps = np.array([1000, 1000, 1000, 1000, 1000, 48, 1000])
    new_lo, new_hi = LADDER.refine(lo, hi, generated, caps)
    assert new_lo.tolist() == [5, 11, 21, 41, 71, 48, 10]
    # g=3: before the first checkpoint; g=10: rho_8 = 0 keeps hi; g=20: ceil(20 x 3.0);
    # g=40: ceil(40 x 2.5); g=70 >= stop: max_tokens; capped at 48; g=9 passed hi: hi = lo
    assert new_hi.tolist() == [40, 40, 60, 100, 1000, 48, 10]


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_ladder_refine_is_monotone_idempotent_and_valid(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 30))
    caps = np.asarray(data.draw(st.lists(st.integers(1, 5000), min_size=n, max_size=n)))
    lo = np.asarray([data.draw(st.integers(1, int(c))) for c in caps])
    hi = np.asarray([data.draw(st.integers(int(a), int(c))) for a, c in zip(lo, caps, strict=True)])
    gen = np.asarray(data.draw(st.lists(st.integers(1, 6000), min_size=n, max_size=n)))
    new_lo, new_hi = LADDER.refine(lo, hi, gen, caps)
    assert np.all((1 <= new_lo) & (new_lo <= new_hi) & (new_hi <= caps))
    assert np.all(new_lo >= np.minimum(gen + 1, caps)) and np.all(new_hi >= hi)
    again = LADDER.refine(new_lo, new_hi, gen, caps)
    assert np.array_equal(again[0], new_lo) and np.array_equal(again[1], new_hi)


def _heavy_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.maximum(1, np.round(np.exp(rng.normal(5.0, 1.1, size=n)))).astype(np.int64)


@pytest.mark.parametrize("given_hi", [False, True])
def test_ladder_keeps_survivors_covered(given_hi: bool) -> None:
    rng = np.random.default_rng(3)
    y_cal, y_new = _heavy_lengths(rng, 4000), _heavy_lengths(rng, 40000)
    ladder = fit_ladder(y_cal, 0.05, hi=np.full(len(y_cal), 400) if given_hi else None)
    assert ladder.checkpoints[:3] == (8, 16, 32)
    assert int(np.sum(y_cal > ladder.stop)) < 50 <= int(np.sum(y_cal > ladder.checkpoints[-1]))
    for k in ladder.checkpoints:
        alive = y_new > k
        n = int(alive.sum())
        lo, hi = ladder.refine(
            np.ones(n, np.int64), np.full(n, 400), np.full(n, k), np.full(n, 10**6)
        )
        assert np.all(lo == k + 1)
        assert np.mean(y_new[alive] <= hi) >= 0.95 - 3.0 / math.sqrt(np.sum(y_cal > k))


def test_given_hi_ladder_leaves_covered_requests_alone_early() -> None:
    rng = np.random.default_rng(4)
    y = _heavy_lengths(rng, 4000)
    plain = fit_ladder(y, 0.05)
    given = fit_ladder(y, 0.05, hi=np.full(len(y), int(np.quantile(y, 0.99))))
    assert given.rhos[0] == 0.0 < plain.rhos[0]
    assert all(g <= p for g, p in zip(given.rhos, plain.rhos, strict=True))


@pytest.mark.parametrize(
    "args",
    [((8, 8), (1.0, 1.0), 32), ((8,), (1.0, 2.0), 32), ((8,), (-1.0,), 32), ((8, 16), (1, 1), 16)],
)
def test_ladder_validation(args: tuple[tuple[int, ...], tuple[float, ...], int]) -> None:
    with pytest.raises(ValueError):
        RefineLadder(*args)
    assert RefineLadder.from_json(LADDER.to_json()) == LADDER
