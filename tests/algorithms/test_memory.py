"""The incremental future-memory check agrees with its naive O(m^2) definition."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from algorithms.memory import FutureMemory

Job = tuple[int, int]  # (tokens now, remaining iterations)


def naive_peak(jobs: list[Job]) -> int:
    horizon = max((r for _, r in jobs), default=0)
    return max((sum(a + d for a, r in jobs if d < r) for d in range(horizon)), default=0)


jobs_lists = st.lists(st.tuples(st.integers(1, 20), st.integers(1, 15)), max_size=12)


@given(running=jobs_lists, candidates=jobs_lists, capacity=st.integers(1, 200))
def test_fits_matches_naive_projection(
    running: list[Job], candidates: list[Job], capacity: int
) -> None:
    memory = FutureMemory(
        np.array([a for a, _ in running], dtype=np.int64),
        np.array([r for _, r in running], dtype=np.int64),
        capacity,
    )
    admitted = list(running)
    for a, r in candidates:
        expected = naive_peak([*admitted, (a, r)]) <= capacity
        if naive_peak(admitted) <= capacity:
            assert memory.fits(a, r) == expected
        if memory.fits(a, r):
            memory.add(a, r)
            admitted.append((a, r))
    assert memory.peak_tokens() == naive_peak(admitted)


def test_peak_is_at_a_completion_not_now() -> None:
    # two jobs of 5 tokens: one ends now, one runs 4 more iterations and grows to 8
    memory = FutureMemory(np.array([5, 5]), np.array([1, 4]), capacity=13)
    assert memory.peak_tokens() == 10
    assert memory.fits(3, 1)  # 13 now, nothing later
    assert not memory.fits(3, 4)  # 6 + 8 = 14 > 13 at offset 3
