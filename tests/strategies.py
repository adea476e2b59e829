"""Hypothesis strategies: small random instances of the model in docs/algorithms.md."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from simulator.run import Workload


@st.composite
def workloads(
    draw: Any, *, max_requests: int = 12, within_interval: bool = True
) -> tuple[Workload, int]:
    """A workload whose requests all fit alone in the returned capacity M."""
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
    workload = Workload(
        np.asarray(arrivals, dtype=np.float64),
        np.asarray(prompts, dtype=np.int64),
        np.asarray(outputs, dtype=np.int64),
        np.asarray(los, dtype=np.int64),
        np.asarray(his, dtype=np.int64),
    )
    return workload, capacity
