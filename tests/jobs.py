"""`Jobs`: the algorithms tests' workload, with no simulator behind it.

The same five columns as `simulator.run.Workload` (request i has id i; `lo`/`hi` are what the
policies may see), so `tests/algorithms` runs the scheduling loop on what it builds without
importing the simulator; `as_workload` turns one into the simulator's. Prompt lengths and
intervals are checked by the records `request(i)` builds (`WaitingRequest`, `LengthInterval`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from algorithms.types import LengthInterval, WaitingRequest

if TYPE_CHECKING:
    from simulator.run import Workload

IntArray = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class Jobs:
    """Requests 0 .. n-1: arrival, prompt length, true output length and its interval."""

    arrival_s: NDArray[np.float64]
    prompt_tokens: IntArray
    output_tokens: IntArray
    lo: IntArray
    hi: IntArray

    def __post_init__(self) -> None:
        n = len(self.arrival_s)
        columns = (self.prompt_tokens, self.output_tokens, self.lo, self.hi)
        if any(len(c) != n for c in columns):
            raise ValueError("job columns must have equal length")
        if n and self.output_tokens.min() < 1:
            raise ValueError("output lengths must be >= 1")

    def __len__(self) -> int:
        return len(self.arrival_s)

    def request(self, i: int) -> WaitingRequest:
        interval = LengthInterval(int(self.lo[i]), int(self.hi[i]))
        return WaitingRequest(i, float(self.arrival_s[i]), int(self.prompt_tokens[i]), interval)


def as_workload(jobs: Jobs) -> Workload:
    """The same requests as a `simulator.run.Workload` (imports the simulator when called)."""
    from simulator.run import Workload

    return Workload(jobs.arrival_s, jobs.prompt_tokens, jobs.output_tokens, jobs.lo, jobs.hi)
