"""Expected remaining length from an interval and the tokens produced so far."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms.remaining import (
    DISTRIBUTIONS,
    expected_remaining,
    expected_remaining_one,
    waiting_expected_remaining,
)
from algorithms.types import LengthInterval, WaitingRequest


def arr(*values: int) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def test_uniform_is_the_midpoint_of_what_is_left() -> None:
    result = expected_remaining(arr(10, 10, 10), arr(30, 30, 30), arr(0, 19, 29))
    # g = 0: mean of [10, 30]; g = 19: L in [20, 30] -> 25 - 19; g = 29: L = 30 -> one token
    assert result.tolist() == [20.0, 6.0, 1.0]


def test_loguniform_is_the_logarithmic_mean() -> None:
    result = expected_remaining(arr(10), arr(1000), arr(0), "loguniform")
    assert result[0] == pytest.approx(990 / math.log(100))
    # a log-uniform spread puts more mass near lo than a uniform one
    assert result[0] < expected_remaining(arr(10), arr(1000), arr(0), "uniform")[0]


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_a_request_past_its_upper_bound_needs_one_more_token(distribution: str) -> None:
    assert expected_remaining(arr(5), arr(8), arr(12), distribution).tolist() == [1.0]


def test_unknown_distribution_is_refused() -> None:
    with pytest.raises(ValueError, match="uniform"):
        expected_remaining(arr(1), arr(2), arr(0), "normal")
    with pytest.raises(ValueError, match="uniform"):
        expected_remaining_one(1, 2, 0, "normal")


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 5000), st.integers(0, 5000), st.integers(0, 6000)),
        min_size=1,
        max_size=20,
    ),
    distribution=st.sampled_from(DISTRIBUTIONS),
)
def test_vectorised_equals_one_by_one_and_stays_in_range(
    rows: list[tuple[int, int, int]], distribution: str
) -> None:
    lo = np.asarray([r[0] for r in rows], dtype=np.int64)
    hi = lo + np.asarray([r[1] for r in rows], dtype=np.int64)
    generated = np.asarray([r[2] for r in rows], dtype=np.int64)
    result = expected_remaining(lo, hi, generated, distribution)
    for j in range(len(rows)):
        one = expected_remaining_one(int(lo[j]), int(hi[j]), int(generated[j]), distribution)
        assert result[j] == pytest.approx(one)
        # at least one more token, never more than the upper bound leaves
        assert 1.0 - 1e-9 <= result[j] <= max(1.0, hi[j] - generated[j]) + 1e-9


def test_waiting_request_after_resume_is_seen_as_the_whole_output() -> None:
    fresh = WaitingRequest(1, 0.0, 10, LengthInterval(100, 1000))
    resumed = fresh.after_eviction(300, resume=True)
    for distribution in DISTRIBUTIONS:
        expected = expected_remaining_one(100, 1000, 300, distribution)
        assert waiting_expected_remaining(resumed, distribution) == pytest.approx(expected)
    assert waiting_expected_remaining(fresh) == 550.0
