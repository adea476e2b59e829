"""Hypothesis strategies: small random instances of the model in docs/algorithms.md.

`jobs` draws the algorithms tests' `Jobs`; `workloads` the same as a simulator `Workload`
(importing the simulator only when drawn, so `tests/algorithms` never does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from hypothesis import strategies as st

from tests.jobs import Jobs, as_workload

if TYPE_CHECKING:
    from simulator.run import Workload


@st.composite
def jobs(draw: Any, *, max_requests: int = 12, within_interval: bool = True) -> tuple[Jobs, int]:
    """Jobs whose requests all fit alone in the returned capacity M."""
    n = draw(st.integers(1, max_requests))
    capacity = draw(st.integers(12, 60))
    prompts = draw(st.lists(st.integers(1, 6), min_size=n, max_size=n))
    outputs, los, his = [], [], []
    for s in prompts:
        o = draw(st.integers(1, capacity - s))
        lo = draw(st.integers(1, o))
        hi = draw(st.integers(o, capacity - s))
        if not within_interval and draw(st.booleans()):
            o = draw(st.integers(1, capacity - s))  # may fall outside [lo, hi]
        outputs.append(o)
        los.append(lo)
        his.append(hi)
    arrivals = draw(st.lists(st.integers(0, 10), min_size=n, max_size=n))
    instance = Jobs(
        np.asarray(arrivals, dtype=np.float64),
        np.asarray(prompts, dtype=np.int64),
        np.asarray(outputs, dtype=np.int64),
        np.asarray(los, dtype=np.int64),
        np.asarray(his, dtype=np.int64),
    )
    return instance, capacity


def workloads(
    *, max_requests: int = 12, within_interval: bool = True
) -> st.SearchStrategy[tuple[Workload, int]]:
    """`jobs` as a `simulator.run.Workload`, for the simulator's tests."""
    return jobs(max_requests=max_requests, within_interval=within_interval).map(
        lambda instance: (as_workload(instance[0]), instance[1])
    )
