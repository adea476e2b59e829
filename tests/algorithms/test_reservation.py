"""The adaptive reservation ratio: tightened by overflows, relaxed by calm iterations."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms.reservation import AdaptiveReservation


def reservation(**overrides: float) -> AdaptiveReservation:
    params = {
        "initial": 0.5,
        "minimum": 0.2,
        "maximum": 1.0,
        "tighten_step": 0.1,
        "relax_step": 0.01,
    }
    params.update(overrides)
    return AdaptiveReservation(**params)


def test_overflow_tightens_and_calm_relaxes_within_bounds() -> None:
    r = reservation()
    assert r.observe(0, overflowed=True) == pytest.approx(0.6)
    assert r.observe(1, overflowed=True) == pytest.approx(0.7)
    assert r.observe(2, overflowed=False) == pytest.approx(0.69)
    for step in range(3, 10):
        r.observe(step, overflowed=True)
    assert r.ratio == 1.0  # capped at the maximum
    for step in range(10, 200):
        r.observe(step, overflowed=False)
    assert r.ratio == 0.2  # floored at the minimum


def test_an_iteration_is_counted_once() -> None:
    r = reservation()
    r.observe(4, overflowed=True)
    assert r.observe(4, overflowed=True) == pytest.approx(0.6)
    assert r.observe(4, overflowed=False) == pytest.approx(0.6)
    r.reset()
    assert r.ratio == 0.5
    assert r.observe(4, overflowed=False) == pytest.approx(0.49)  # reset forgets the step too


@settings(max_examples=100, deadline=None)
@given(flags=st.lists(st.booleans(), max_size=300))
def test_ratio_is_a_function_of_the_overflow_sequence(flags: list[bool]) -> None:
    first, second = reservation(), reservation()
    previous = first.ratio
    for step, flag in enumerate(flags):
        ratio = first.observe(step, flag)
        assert ratio == second.observe(step, flag)
        assert 0.2 <= ratio <= 1.0
        # never moves against the signal
        assert ratio >= previous if flag else ratio <= previous
        previous = ratio


def test_planned_remaining_scales_and_clips() -> None:
    r = reservation(initial=0.5)
    expected = np.array([100.0, 3.0, 40.0, 7.0])
    most = np.array([1000, 1000, 10, 0], dtype=np.int64)
    # ceil(0.5 x): 50, 2, 20 -> 10 (its upper bound), 4 -> 1 (outlived its bound)
    assert r.planned_remaining(expected, most).tolist() == [50, 2, 10, 1]
    assert r.planned_remaining_one(100.0, 1000) == 50
    assert r.planned_remaining_one(0.1, 1000) == 1
    assert r.planned_remaining_one(100.0, 30) == 30


@pytest.mark.parametrize(
    "overrides",
    [
        {"minimum": 0.0},
        {"initial": 2.0},
        {"initial": 0.1},
        {"maximum": float("inf"), "initial": 0.5},
        {"tighten_step": -0.1},
        {"relax_step": -0.1},
    ],
)
def test_invalid_settings_are_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        reservation(**overrides)
