"""Tests for simulator/hindsight.py: the IP optimum, its LP bound, MC-SF instances."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from simulator.hindsight import (
    HindsightResult,
    make_synthetic_instance,
    memory_profile,
    solve_hindsight,
)

IntArray = NDArray[np.int64]

# Reference cases 1 (M = 12) and 3 (M = 16) of docs/algorithms.md, all arrivals at slot 0.
S_81, O_81 = np.array([2, 2, 3, 4, 1]), np.array([3, 1, 2, 4, 2])
S_83, O_83 = np.ones(8, dtype=np.int64), np.array([2, 2, 3, 5, 8, 8, 4, 6])


def slot_loads(starts: IntArray, s: IntArray, o: IntArray) -> dict[int, int]:
    """Memory per slot, recomputed request by request, independent of the module."""
    loads: dict[int, int] = {}
    for k, s_i, o_i in zip(starts.tolist(), s.tolist(), o.tolist(), strict=True):
        for t in range(k, k + o_i):
            loads[t] = loads.get(t, 0) + s_i + (t - k + 1)
    return loads


def brute_force_tel(a: IntArray, s: IntArray, o: IntArray, capacity: int) -> int:
    """Exact optimum by enumerating every start tuple in [a_i, max(a) + sum(o) - o_i]."""
    horizon = int(a.max() + o.sum())
    grids = np.meshgrid(
        *[np.arange(a_i, horizon - o_i + 1) for a_i, o_i in zip(a, o, strict=True)], indexing="ij"
    )
    starts = np.stack([g.ravel() for g in grids], axis=1)
    load = np.zeros((starts.shape[0], horizon), dtype=np.int64)
    rows = np.arange(starts.shape[0])
    for i in range(a.size):
        for age in range(int(o[i])):
            load[rows, starts[:, i] + age] += s[i] + age + 1
    feasible = (load <= capacity).all(axis=1)
    return int((starts[feasible] + o - a).sum(axis=1).min())


def assert_valid_schedule(
    res: HindsightResult, a: IntArray, s: IntArray, o: IntArray, m: int
) -> None:
    assert res.start_slots is not None
    assert (res.start_slots >= a).all()
    assert max(slot_loads(res.start_slots, s, o).values()) <= m
    assert res.total_latency == float((res.start_slots + o - a).sum())
    assert res.lower_bound <= res.total_latency


def test_case_1_optimum_equals_brute_force_and_hsf_value() -> None:
    a = np.zeros(5, dtype=np.int64)
    res = solve_hindsight(a, S_81, O_81, 12)
    assert res.is_optimal and res.status == "optimal"
    assert res.total_latency == 14.0 == brute_force_tel(a, S_81, O_81, 12)
    assert_valid_schedule(res, a, S_81, O_81, 12)


def test_case_3_optimum_is_49_so_hsf_is_optimal_there() -> None:
    a = np.zeros(8, dtype=np.int64)
    res = solve_hindsight(a, S_83, O_83, 16)
    assert res.is_optimal and res.total_latency == 49.0
    assert_valid_schedule(res, a, S_83, O_83, 16)


@pytest.mark.parametrize(("s", "o", "m"), [(S_81, O_81, 12), (S_83, O_83, 16)])
def test_lp_relaxation_is_a_lower_bound_on_the_ip(s: IntArray, o: IntArray, m: int) -> None:
    a = np.zeros(s.size, dtype=np.int64)
    lp = solve_hindsight(a, s, o, m, relax=True)
    assert lp.start_slots is None and lp.lower_bound == lp.total_latency
    assert float(o.sum()) <= lp.total_latency <= solve_hindsight(a, s, o, m).total_latency + 1e-6


def test_lp_relaxation_of_case_3_is_strictly_below_the_optimum() -> None:
    lp = solve_hindsight(np.zeros(8, dtype=np.int64), S_83, O_83, 16, relax=True)
    assert lp.total_latency == pytest.approx(45.9166666, abs=1e-4)


def test_heuristic_makespan_horizon_can_cut_off_the_optimum() -> None:
    # Any two requests fit (22..26 <= 26), three never do: two "machines", SPT wins with makespan 4.
    a, s, o = np.zeros(4, dtype=np.int64), np.full(4, 10), np.array([1, 1, 1, 3])
    assert solve_hindsight(a, s, o, 26).total_latency == 8.0 == brute_force_tel(a, s, o, 26)
    short = solve_hindsight(a, s, o, 26, horizon=3)
    assert short.total_latency == 9.0 and short.start_slots is not None
    assert (short.start_slots + o).max() <= 3


@pytest.mark.parametrize(("s", "o", "m", "makespan"), [(S_81, O_81, 12, 6), (S_83, O_83, 16, 15)])
def test_tighter_horizon_that_holds_an_optimum_keeps_the_value(
    s: IntArray, o: IntArray, m: int, makespan: int
) -> None:
    a = np.zeros(s.size, dtype=np.int64)
    default = solve_hindsight(a, s, o, m)
    assert default.start_slots is not None and (default.start_slots + o).max() <= makespan
    for horizon in (makespan, makespan + 7, int(o.sum()) + 5):
        assert solve_hindsight(a, s, o, m, horizon=horizon).total_latency == default.total_latency


tiny = st.integers(1, 4).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 2), min_size=n, max_size=n),
        st.lists(st.integers(0, 4), min_size=n, max_size=n),
        st.lists(st.integers(1, 4), min_size=n, max_size=n),
        st.integers(0, 5),
    )
)


@settings(max_examples=30, deadline=None)
@given(tiny)
def test_ip_matches_brute_force_on_tiny_instances(
    case: tuple[list[int], list[int], list[int], int],
) -> None:
    a, s, o = (np.array(v, dtype=np.int64) for v in case[:3])
    m = int((s + o).max()) + case[3]  # tight memory, so requests really compete
    res = solve_hindsight(a, s, o, m)
    assert res.is_optimal
    assert res.total_latency == brute_force_tel(a, s, o, m)
    assert_valid_schedule(res, a, s, o, m)
    assert solve_hindsight(a, s, o, m, relax=True).total_latency <= res.total_latency + 1e-6


# Found by random search: the list-scheduling incumbent is suboptimal, so HiGHS must improve it.
@pytest.mark.parametrize(
    ("a", "s", "o", "m", "optimum"),
    [
        ([0, 0, 0, 1], [4, 2, 0, 1], [3, 4, 3, 4], 8, 23),
        ([1, 0, 2, 1], [4, 2, 2, 3], [2, 3, 2, 4], 11, 14),
        ([2, 1, 1, 2], [0, 1, 3, 2], [4, 4, 3, 3], 6, 28),
        ([2, 1, 2, 1], [4, 2, 0, 3], [1, 3, 1, 2], 5, 13),
    ],
)
def test_ip_beats_the_incumbent_and_matches_brute_force(
    a: list[int], s: list[int], o: list[int], m: int, optimum: int
) -> None:
    arr, sa, oa = np.array(a), np.array(s), np.array(o)
    res = solve_hindsight(arr, sa, oa, m)
    assert res.is_optimal and res.num_variables > 0
    assert res.total_latency == optimum == brute_force_tel(arr, sa, oa, m)
    assert_valid_schedule(res, arr, sa, oa, m)


def test_requests_that_never_fit_are_named() -> None:
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        solve_hindsight(
            np.zeros(4, dtype=np.int64), np.array([1, 5, 1, 2]), np.array([2, 6, 3, 9]), 10
        )


def test_horizons_that_admit_no_schedule_are_rejected() -> None:
    a, s, o = np.zeros(2, dtype=np.int64), np.array([5, 5]), np.array([1, 1])
    assert solve_hindsight(a, s, o, 6, horizon=2).total_latency == 3.0
    with pytest.raises(ValueError, match="no feasible schedule"):
        solve_hindsight(a, s, o, 6, horizon=1)  # only one request fits per slot
    with pytest.raises(ValueError, match="horizon"):
        solve_hindsight(a, s, np.array([1, 3]), 9, horizon=2)
    with pytest.raises(ValueError, match="time_limit_s"):
        solve_hindsight(a, s, o, 6, time_limit_s=0.0)


def test_time_limited_solve_returns_a_feasible_schedule_and_a_valid_bound() -> None:
    inst = make_synthetic_instance(np.random.default_rng(7), num_requests=12)
    args = (inst.arrival_slots, inst.prompt_tokens, inst.output_tokens, inst.capacity)
    res = solve_hindsight(*args, time_limit_s=0.5)
    assert res.status in ("optimal", "time_limit")
    assert res.is_optimal == (res.lower_bound == res.total_latency)
    assert res.lower_bound >= inst.output_tokens.sum()  # every latency is at least o_i
    assert_valid_schedule(res, *args)


def test_poisson_instance_is_solved_with_starts_after_arrivals() -> None:
    inst = make_synthetic_instance(np.random.default_rng(3), arrivals="poisson", num_requests=5)
    args = (inst.arrival_slots, inst.prompt_tokens, inst.output_tokens, inst.capacity)
    res = solve_hindsight(*args)
    assert res.is_optimal
    assert_valid_schedule(res, *args)


@pytest.mark.parametrize("arrivals", ["batch", "poisson"])
def test_synthetic_instances_follow_section_2_6(arrivals: str) -> None:
    for seed in range(20):
        inst = make_synthetic_instance(np.random.default_rng(seed), arrivals=arrivals)  # type: ignore[arg-type]
        s, o = inst.prompt_tokens, inst.output_tokens
        assert 30 <= inst.capacity <= 50
        assert ((1 <= s) & (s <= 5)).all() and ((1 <= o) & (o <= inst.capacity - s)).all()
        assert (np.diff(inst.arrival_slots) >= 0).all() and (inst.arrival_slots >= 0).all()
        if arrivals == "batch":
            assert (inst.arrival_slots == 0).all()


def test_synthetic_generator_is_deterministic_and_honours_rate() -> None:
    one = make_synthetic_instance(np.random.default_rng(5), arrivals="poisson", num_requests=400)
    two = make_synthetic_instance(np.random.default_rng(5), arrivals="poisson", num_requests=400)
    assert np.array_equal(one.arrival_slots, two.arrival_slots) and one.capacity == two.capacity
    fast = make_synthetic_instance(
        np.random.default_rng(5), arrivals="poisson", num_requests=400, rate=4.0
    )
    assert fast.arrival_slots[-1] == pytest.approx(100, rel=0.2)
    with pytest.raises(ValueError):
        make_synthetic_instance(np.random.default_rng(5), rate=1.0)


def test_memory_profile_matches_the_slot_by_slot_definition() -> None:
    starts = np.array([0, 0, 0, 2, 0])
    loads = slot_loads(starts, S_81, O_81)
    assert memory_profile(starts, S_81, O_81).tolist() == [loads[t] for t in range(6)]


def test_result_rejects_a_lower_bound_above_the_value() -> None:
    with pytest.raises(ValueError):
        HindsightResult(10.0, None, "time_limit", False, 11.0, 3)
    with pytest.raises(ValueError):
        HindsightResult(10.0, None, "time_limit", True, 10.0, 3)
