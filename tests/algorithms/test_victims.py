"""Eviction victims: cheap-to-recompute requests with a long way to go first, limited preemption."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from algorithms.remaining import expected_remaining
from algorithms.state import RunningSet
from algorithms.types import LengthInterval, WaitingRequest
from algorithms.victims import check_share, choose_victims, eviction_order


def running_set(rows: list[tuple[int, int, int, int]]) -> RunningSet:
    """(prompt, lo, hi, generated) per row, admitted in this order at steps 0, 1, 2, ..."""
    running = RunningSet()
    for j, (prompt, lo, hi, _) in enumerate(rows):
        request = WaitingRequest(j, 0.0, prompt, LengthInterval(lo, hi))
        running.admit([request], j, 10_000)
    running.generated = np.asarray([r[3] for r in rows], dtype=np.int64)
    running.prefill_left[:] = 0
    running.kv_tokens = int((running.prompt_tokens + running.generated).sum())
    return running


def remaining_of(running: RunningSet) -> np.ndarray:
    return expected_remaining(running.lo, running.hi, running.generated)


def test_young_request_with_a_long_way_to_go_goes_first() -> None:
    running = running_set(
        [
            (10, 100, 900, 5),  # young, long expected: cheap to recompute, frees future growth
            (10, 100, 900, 400),  # far into its run: 410 tokens to recompute
            (300, 10, 30, 2),  # long prompt, short output: expensive for what it frees
        ]
    )
    order = eviction_order(running, remaining_of(running), protect_share=1.0)
    assert order.tolist() == [0, 1, 2]


def test_protected_requests_go_last_but_still_go_when_needed() -> None:
    running = running_set(
        [
            (1, 1, 12, 10),  # 10 of a predicted ~11.5 tokens done: protected at share 0.5
            (1000, 1, 20, 0),  # just started, but 1000 prompt tokens to prefill again
        ]
    )
    remaining = remaining_of(running)
    # by cost alone the nearly finished request would go first
    assert eviction_order(running, remaining, 1.0).tolist() == [0, 1]
    assert eviction_order(running, remaining, 0.5).tolist() == [1, 0]
    tokens = running.next_step_tokens()
    assert choose_victims(running, remaining, tokens - 5, 1.0).tolist() == [0]
    assert choose_victims(running, remaining, tokens - 5, 0.5).tolist() == [1]
    # only evicting both fits: the protected one goes too
    assert choose_victims(running, remaining, 0, 0.5).tolist() == [1, 0]


def test_no_overflow_no_victims() -> None:
    running = running_set([(10, 5, 50, 3)])
    assert len(choose_victims(running, remaining_of(running), 10_000, 0.5)) == 0


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(1, 50), st.integers(1, 60), st.integers(0, 200), st.integers(0, 100)),
        min_size=1,
        max_size=15,
    ),
    capacity=st.integers(1, 3000),
    share=st.sampled_from([0.3, 0.5, 1.0]),
)
def test_victims_make_the_batch_fit_and_are_a_minimal_prefix(
    rows: list[tuple[int, int, int, int]], capacity: int, share: float
) -> None:
    running = running_set([(p, lo, lo + w, g) for p, lo, w, g in rows])
    remaining = remaining_of(running)
    victims = choose_victims(running, remaining, capacity, share)
    order = eviction_order(running, remaining, share)
    assert victims.tolist() == order[: len(victims)].tolist()
    held = running.prompt_tokens + running.generated + 1
    left = running.next_step_tokens() - int(held[victims].sum())
    assert left <= max(capacity, 0) or len(victims) == len(running)
    if len(victims):  # one victim fewer would not have been enough
        assert left + int(held[victims[-1]]) > capacity


def test_invalid_share_is_refused() -> None:
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="protect_share"):
            check_share(bad)
