"""Tests for Sorted-F group selection (algorithms._groups, algorithms._group_heuristics)."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms._group_heuristics import _first_fit
from algorithms._groups import (
    group_f,
    knapsack_table,
    plan_groups,
    select_group,
    select_group_exact,
    select_group_greedy,
)

# Reference case 2 (docs/algorithms.md): request 0 = (s=9, o=1), requests 1..6 = (s=1, o=2), M = 10.
S82 = np.array([9, 1, 1, 1, 1, 1, 1])
O82 = np.array([1, 2, 2, 2, 2, 2, 2])

Instance = tuple[np.ndarray, np.ndarray, int]


@st.composite
def instances(draw: st.DrawFn, max_n: int = 10) -> Instance:
    n = draw(st.integers(0, max_n))
    s = draw(st.lists(st.integers(0, 15), min_size=n, max_size=n))
    o = draw(st.lists(st.integers(1, 10), min_size=n, max_size=n))
    return np.array(s, dtype=np.int64), np.array(o, dtype=np.int64), draw(st.integers(0, 40))


def brute_force(w: np.ndarray, o: np.ndarray, cap: int) -> tuple[int, ...]:
    """Optimal group with the full tie-break: min F, larger |X|, lighter, lexicographic."""
    best: tuple[Fraction, int, int, tuple[int, ...]] | None = None
    for k in range(1, w.size + 1):
        for ids in itertools.combinations(range(w.size), k):
            weight = int(w[list(ids)].sum())
            if weight <= cap:
                key = (Fraction(int(o[list(ids)].sum()), k * k), -k, weight, ids)
                best = key if best is None or key < best else best
    return () if best is None else best[3]


def exact_f(o: np.ndarray, group: np.ndarray) -> Fraction:
    return Fraction(int(o[group].sum()), group.size**2)


def test_group_f() -> None:
    assert group_f(np.array([2, 2, 2])) == pytest.approx(6 / 9)
    assert group_f([1]) == 1.0
    with pytest.raises(ValueError):
        group_f([])


def test_case_2_exact_group_and_dp_table() -> None:
    group = select_group_exact(S82, O82, 10)
    assert group.tolist() == [1, 2, 3] and group.dtype == np.int64
    assert group_f(O82[group]) == pytest.approx(2 / 3)
    table = knapsack_table(S82, O82, 10)
    assert table.shape == (4, 11)  # k_max = 3: four small requests weigh 12 > 10
    assert table[1:, 10].tolist() == [1.0, 4.0, 6.0]
    f = table[1:, 10] / np.arange(1, 4) ** 2
    assert int(np.argmin(f)) + 1 == 3 and f.min() == pytest.approx(0.667, abs=1e-3)


def test_case_2_plan_groups() -> None:
    groups, unfit = plan_groups(S82, O82, 10)
    assert [g.tolist() for g in groups] == [[1, 2, 3], [4, 5, 6], [0]]
    assert unfit.size == 0
    assert [group_f(O82[g]) for g in groups] == pytest.approx([2 / 3, 2 / 3, 1.0])


def test_case_2_greedy_single_start_is_blocked_multi_start_is_not() -> None:
    # The paper's greedy takes the o=1 request first; nothing else then fits and no local move
    # (add / swap / remove) lowers F = 1. The o + lam * w starts find the optimum.
    assert select_group_greedy(S82, O82, 10, multi_start=False).tolist() == [0]
    assert select_group_greedy(S82, O82, 10).tolist() == [1, 2, 3]


def test_select_group_dispatch() -> None:
    assert select_group(S82, O82, 10).tolist() == [1, 2, 3]
    assert select_group(S82, O82, 10, exact_max_items=6, multi_start=False).tolist() == [0]
    assert select_group(S82, O82, 10, exact_max_items=7, multi_start=False).tolist() == [1, 2, 3]
    assert select_group(S82, O82, 10, exact_max_cells=230, multi_start=False).tolist() == [0]
    assert select_group(S82, O82, 10, exact_max_cells=231, multi_start=False).tolist() == [1, 2, 3]


def test_exact_tie_breaks() -> None:
    # Equal F = 1: {0} (o=1) vs {1, 2} (o=2+2); {0} fits with neither. The larger group wins.
    assert select_group_exact([10, 0, 0], [1, 2, 2], 11).tolist() == [1, 2]
    # Equal F and size: the lighter request wins.
    assert select_group_exact([5, 3, 4], [7, 7, 7], 15).tolist() == [1]
    # Identical requests: lexicographically smallest ids.
    assert select_group_exact([1] * 5, [2] * 5, 9).tolist() == [0, 1, 2]
    # {0, 3} and {1, 2} tie on F, size and weight (8); lexicographic order prefers {0, 3}.
    assert select_group_exact([4, 2, 2, 0], [1, 2, 2, 3], 8).tolist() == [0, 3]


def test_items_that_never_fit() -> None:
    s, o = np.array([20, 3, 30]), np.array([1, 2, 1])
    assert select_group_exact(s, o, 10).tolist() == [1]
    assert select_group_greedy(s, o, 10).tolist() == [1]
    assert select_group_exact(s[[0, 2]], o[[0, 2]], 10).size == 0
    assert select_group_greedy(s[[0, 2]], o[[0, 2]], 10).size == 0
    groups, unfit = plan_groups(s, o, 10)
    assert [g.tolist() for g in groups] == [[1]] and unfit.tolist() == [0, 2]
    assert select_group_exact([], [], 10).size == 0 and plan_groups([], [], 0)[0] == []


@pytest.mark.parametrize(
    ("s", "o", "capacity", "block"),
    [
        ([1, 2], [1], 10, 1),  # length mismatch
        ([1], [0], 10, 1),  # o must be >= 1
        ([-1], [1], 10, 1),  # s must be >= 0
        ([1.5], [1], 10, 1),  # not a token count
        ([[1]], [[1]], 10, 1),  # not 1-D
        ([1], [1], -1, 1),  # negative capacity
        ([1], [1], 10, 0),  # block_tokens >= 1
    ],
)
def test_validation(s: list[float], o: list[int], capacity: int, block: int) -> None:
    with pytest.raises(ValueError):
        select_group_exact(s, o, capacity, block_tokens=block)


def test_integral_floats_accepted() -> None:
    assert select_group(np.array([9.0, 1.0]), np.array([1.0, 2.0]), 10).tolist() == [0]


def test_local_search_strictly_improves_a_start() -> None:
    s, o = np.array([4, 7, 7, 0, 8, 1, 3]), np.array([3, 5, 6, 4, 2, 4, 7])
    start = select_group_greedy(s, o, 20, local_search=False)
    improved = select_group_greedy(s, o, 20)
    assert start.tolist() == [0, 3, 5] and improved.tolist() == [3, 4, 5]
    assert exact_f(o, improved) == Fraction(10, 9) == exact_f(o, select_group_exact(s, o, 20))
    assert select_group_greedy(s, o, 20, max_moves=0).tolist() == start.tolist()


@settings(max_examples=300, deadline=None)
@given(instances())
def test_exact_matches_brute_force(inst: Instance) -> None:
    s, o, cap = inst
    group = select_group_exact(s, o, cap)
    assert tuple(group.tolist()) == brute_force(s + o, o, cap)
    assert int((s + o)[group].sum()) <= cap


@settings(max_examples=200, deadline=None)
@given(instances(), st.integers(1, 4))
def test_block_quantisation_is_exact_in_blocks_and_feasible_in_tokens(
    inst: Instance, block: int
) -> None:
    s, o, cap = inst
    group = select_group_exact(s, o, cap, block_tokens=block)
    assert tuple(group.tolist()) == brute_force(-((s + o) // -block), o, cap // block)
    assert int((s + o)[group].sum()) <= cap
    assert int((s + o)[select_group_greedy(s, o, cap, block_tokens=block)].sum()) <= cap


@settings(max_examples=300, deadline=None)
@given(instances(), st.booleans())
def test_greedy_feasible_and_never_beats_exact(inst: Instance, multi_start: bool) -> None:
    s, o, cap = inst
    exact = select_group_exact(s, o, cap)
    start = select_group_greedy(s, o, cap, local_search=False, multi_start=multi_start)
    group = select_group_greedy(s, o, cap, multi_start=multi_start)
    assert group.size == exact.size == 0 or (group.size > 0 and exact.size > 0)
    if group.size:
        assert np.all(np.diff(group) > 0) and int((s + o)[group].sum()) <= cap
        assert exact_f(o, exact) <= exact_f(o, group) <= exact_f(o, start)


def check_plan(s: np.ndarray, o: np.ndarray, cap: int, **kwargs: object) -> None:
    groups, unfit = plan_groups(s, o, cap, **kwargs)
    assert unfit.tolist() == np.flatnonzero(s + o > cap).tolist()
    flat = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
    assert sorted(flat.tolist()) == np.flatnonzero(s + o <= cap).tolist()  # each exactly once
    assert all(g.size > 0 and int((s + o)[g].sum()) <= cap for g in groups)
    fs = [exact_f(o, g) for g in groups]
    assert fs == sorted(fs)


@settings(max_examples=150, deadline=None)
@given(instances())
def test_plan_groups_partitions_with_non_decreasing_f(inst: Instance) -> None:
    s, o, cap = inst
    check_plan(s, o, cap)  # exact path
    check_plan(s, o, cap, exact_max_items=0)  # greedy path, then sorted by F
    check_plan(s, o, cap, exact_max_items=0, multi_start=False, local_search=False)


@settings(max_examples=200, deadline=None)
@given(instances(max_n=30))
def test_vectorised_first_fit_matches_sequential_scan(inst: Instance) -> None:
    s, o, cap = inst
    w = s + o
    order = np.argsort(-o, kind="stable")
    expected, used = [], 0
    for i in order.tolist():
        if used + int(w[i]) <= cap:
            expected.append(i)
            used += int(w[i])
    assert _first_fit(order, w, cap).tolist() == expected


def test_large_backlog_greedy() -> None:
    rng = np.random.default_rng(0)
    n = 10_000
    s = np.where(rng.random(n) < 0.2, rng.integers(2000, 12000, n), rng.integers(10, 800, n))
    o = rng.integers(1, 1500, n)
    group = select_group(s, o, 16_492)
    single = select_group_greedy(s, o, 16_492, multi_start=False, local_search=False)
    assert group.size > 0 and int((s + o)[group].sum()) <= 16_492
    assert exact_f(o, group) <= exact_f(o, single)
