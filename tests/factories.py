"""Test factories in the style of vLLM's `create_requests`: keyword-only, sensible defaults.

`make_jobs` builds the algorithms tests' `Jobs`; `make_workload` the simulator's `Workload`
(importing the simulator only when called, so `tests/algorithms` never does).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tests.jobs import Jobs, as_workload

if TYPE_CHECKING:
    from simulator.run import Workload

# docs/algorithms.md, "Reference cases": (prompt, output) per request, capacity M, and the common
# interval where one is given
CASE_1 = {"prompts": [2, 2, 3, 4, 1], "outputs": [3, 1, 2, 4, 2], "capacity": 12}
CASE_2 = {"prompts": [9] + [1] * 6, "outputs": [1] + [2] * 6, "capacity": 10}
CASE_3 = {
    "prompts": [1] * 8,
    "outputs": [2, 2, 3, 5, 8, 8, 4, 6],
    "capacity": 16,
    "interval": (2, 8),
}


def make_jobs(
    *,
    prompts: Sequence[int],
    outputs: Sequence[int],
    arrivals: Sequence[float] | None = None,
    interval: tuple[int, int] | None = None,
    lo: Sequence[int] | None = None,
    hi: Sequence[int] | None = None,
) -> Jobs:
    """Exact intervals unless a common `interval` or per-request `lo`/`hi` is given."""
    n = len(prompts)
    out = np.asarray(outputs, dtype=np.int64)
    if interval is not None:
        lo_a, hi_a = np.full(n, interval[0]), np.full(n, interval[1])
    else:
        lo_a = np.asarray(lo if lo is not None else out)
        hi_a = np.asarray(hi if hi is not None else out)
    return Jobs(
        np.asarray(arrivals if arrivals is not None else np.zeros(n), dtype=np.float64),
        np.asarray(prompts, dtype=np.int64),
        out,
        lo_a.astype(np.int64),
        hi_a.astype(np.int64),
    )


def make_workload(
    *,
    prompts: Sequence[int],
    outputs: Sequence[int],
    arrivals: Sequence[float] | None = None,
    interval: tuple[int, int] | None = None,
    lo: Sequence[int] | None = None,
    hi: Sequence[int] | None = None,
) -> Workload:
    """`make_jobs` as a `simulator.run.Workload`, for the simulator's tests."""
    return as_workload(
        make_jobs(
            prompts=prompts, outputs=outputs, arrivals=arrivals, interval=interval, lo=lo, hi=hi
        )
    )


def write_canonical_trace(
    path: Path,
    *,
    prompts: Sequence[int],
    outputs: Sequence[int],
    interval: tuple[int, int] | None = None,
) -> Path:
    """A canonical JSONL trace with lo/hi (exact unless a common interval is given)."""
    with path.open("w") as f:
        for s, o in zip(prompts, outputs, strict=True):
            lo, hi = interval if interval is not None else (o, o)
            record = {"arrival_s": 0.0, "prompt_tokens": s, "output_tokens": o, "lo": lo, "hi": hi}
            f.write(json.dumps(record) + "\n")
    return path
