"""Linear aging: the static waiting key, its equivalence to clock-based aging, and its bound."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms import SchedulingLoop, make_batch_former
from algorithms.aging import aged_key, check_wait_weight, overtake_window_s
from algorithms.remaining import waiting_expected_remaining
from algorithms.state import WaitingQueue
from algorithms.types import LengthInterval, WaitingRequest
from tests.algorithms.fake_executor import FakeExecutor
from tests.factories import make_jobs

requests_strategy = st.lists(
    st.tuples(st.integers(0, 200), st.integers(1, 400), st.integers(0, 400)),
    min_size=2,
    max_size=30,
)


def build(rows: list[tuple[int, int, int]]) -> list[WaitingRequest]:
    return [
        WaitingRequest(i, arrival / 4, 5, LengthInterval(lo, lo + width))
        for i, (arrival, lo, width) in enumerate(rows)
    ]


@settings(max_examples=150, deadline=None)
@given(rows=requests_strategy, wait_weight=st.sampled_from([0.5, 1.0, 3.0, 10.0]))
def test_no_request_is_overtaken_by_one_arriving_after_its_window(
    rows: list[tuple[int, int, int]], wait_weight: float
) -> None:
    former = make_batch_former("asf", wait_weight=wait_weight)
    queue = WaitingQueue(key=former.waiting_key)
    requests = build(rows)
    for request in requests:
        queue.add(request)
    rank = {r.id: k for k, r in enumerate(queue)}
    for a in requests:
        window = overtake_window_s(waiting_expected_remaining(a), wait_weight)
        for b in requests:
            if b.arrival_s >= a.arrival_s + window and b.id != a.id:
                assert rank[b.id] > rank[a.id]


@settings(max_examples=100, deadline=None)
@given(rows=requests_strategy, now_offset=st.floats(0.0, 1000.0), weight=st.floats(0.1, 50.0))
def test_static_key_orders_as_aging_by_time_waited(
    rows: list[tuple[int, int, int]], now_offset: float, weight: float
) -> None:
    """remaining + w * arrival ranks exactly as remaining - w * (now - arrival), at any now."""
    requests = build(rows)
    now = max(r.arrival_s for r in requests) + now_offset
    static = sorted(requests, key=lambda r: aged_key(r, waiting_expected_remaining(r), weight))

    def aged(r: WaitingRequest) -> float:
        return waiting_expected_remaining(r) - weight * (now - r.arrival_s)

    values = [aged(r) for r in static]
    assert all(x <= y + 1e-6 * max(1.0, abs(y)) for x, y in zip(values, values[1:], strict=False))


def test_zero_weight_is_shortest_expected_first_and_has_no_window() -> None:
    early_long = WaitingRequest(0, 0.0, 5, LengthInterval(500, 900))
    late_short = WaitingRequest(1, 1e6, 5, LengthInterval(1, 3))
    keys = [aged_key(r, waiting_expected_remaining(r), 0.0) for r in (early_long, late_short)]
    assert keys[1] < keys[0]
    assert overtake_window_s(700.0, 0.0) == math.inf
    assert overtake_window_s(700.0, 10.0) == 70.0


def test_invalid_wait_weight_is_refused() -> None:
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="wait_weight"):
            check_wait_weight(bad)


def one_at_a_time(wait_weight: float) -> list[int]:
    """A long request at t = 0 and a short one arriving every iteration; room for one at a time.

    Returns request ids in admission order; request i > 0 arrives at i - 1.
    """
    count = 30
    prompts = np.full(count, 15, dtype=np.int64)
    outputs = np.full(count, 3, dtype=np.int64)
    outputs[0] = 10
    arrivals = np.maximum(np.arange(count, dtype=np.float64) - 1.0, 0.0)  # 0, 0, 1, 2, ...
    workload = make_jobs(prompts=prompts, outputs=outputs, arrivals=arrivals)
    former = make_batch_former(
        "asf", wait_weight=wait_weight, ratio_initial=1.0, ratio_min=1.0, ratio_max=1.0
    )
    loop = SchedulingLoop(former, FakeExecutor(outputs), 30)
    order: list[int] = []
    now, upcoming = 0.0, 0
    while upcoming < count or loop.has_work:
        while upcoming < count and workload.arrival_s[upcoming] <= now:
            loop.add_request(workload.request(upcoming))
            upcoming += 1
        outcome = loop.step(now)
        assert not outcome.evicted
        order.extend(outcome.admitted)
        now += 1.0
        assert now < 1000, "no progress"
    return order


def test_the_long_request_starves_without_aging_and_not_with_it() -> None:
    # a running short request blocks it at t = 0, then the shorts keep coming
    assert one_at_a_time(0.0)[-1] == 0
    weight = 1.0
    order = one_at_a_time(weight)
    ahead = order[: order.index(0)]
    # the bound: only requests arriving within 10 / weight after it got ahead
    assert ahead and max(ahead) - 1 < 0 + 10 / weight
    # exactly those with 3 + weight * arrival < 10: arrivals 0 .. 6
    assert ahead == list(range(1, 8))
    assert order.index(0) < len(order) - 1
