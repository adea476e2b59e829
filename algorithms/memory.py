"""The future-memory feasibility check (docs/algorithms.md), incremental and vectorised.

Time is measured in iterations from now (offset d = 0 is the coming iteration). A job that
holds `a` KV tokens in the coming iteration and is planned to run `r` more iterations holds
`a + d` tokens at offset d < r. Projected memory only drops at completions, so it peaks at each
job's last planned iteration d = r - 1: checking those checkpoints is enough. Each candidate
costs O(m) numpy work over the m checkpoints, instead of the naive O(m^2) recomputation.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from algorithms.state import RunningSet

IntArray = NDArray[np.int64]
_OFFSET, _BASE, _COUNT, _HEADROOM = range(4)


class FutureMemory:
    """Projected KV load at every checkpoint; `fits` then `add` candidates one by one.

    `tokens_now[j]`: KV tokens job j holds in the coming iteration (prompt + tokens incl. the
    one produced now). `remaining_steps[j] >= 1`: iterations it is planned to run, this one
    included. Invariant: `headroom[k] = capacity - load(d[k]) - d[k]` for sorted offsets d.
    """

    def __init__(self, tokens_now: IntArray, remaining_steps: IntArray, capacity: int) -> None:
        if len(remaining_steps) and int(remaining_steps.min()) < 1:
            raise ValueError("remaining_steps must be >= 1")
        ends = remaining_steps - 1
        order = np.argsort(ends, kind="stable")
        sorted_ends = ends[order]
        offsets, first = np.unique(sorted_ends, return_index=True)
        # jobs alive at offsets[k] are those from index first[k] on in end order
        suffix_tokens = np.cumsum(tokens_now[order][::-1])[::-1]
        self.capacity = capacity
        # one table so a new checkpoint is a single insert: offset, base, count, headroom
        self._table: IntArray = np.stack(
            (
                offsets,
                suffix_tokens[first],
                len(ends) - first,
                capacity - suffix_tokens[first] - (len(ends) - first + 1) * offsets,
            )
        ).astype(np.int64)

    @classmethod
    def for_running(
        cls, running: RunningSet, planned_tokens: IntArray, capacity: int
    ) -> FutureMemory:
        """Project running jobs with planning lengths; one that outlived its plan needs g + 1."""
        generated = running.generated
        total = np.maximum(planned_tokens, generated + 1)
        tokens_now = running.prompt_tokens + generated + 1
        return cls(tokens_now, total - generated, capacity)

    def peak_tokens(self) -> int:
        """Largest projected load over all future iterations (0 when nothing runs)."""
        if not self._table.shape[1]:
            return 0
        offsets, base, count, _ = self._table
        return int((base + count * offsets).max())

    def fits(self, tokens_now: int, steps: int) -> bool:
        """Would a job holding `tokens_now` now and running `steps` iterations keep load <= M?"""
        last = steps - 1
        offsets = self._table[_OFFSET]
        k = int(np.searchsorted(offsets, last, side="right"))
        if k and int(self._table[_HEADROOM, :k].min()) < tokens_now:
            return False
        if k and offsets[k - 1] == last:
            return True
        existing = 0
        if k < len(offsets):  # the same jobs are alive at `last` as at the next checkpoint
            existing = int(self._table[_BASE, k]) + int(self._table[_COUNT, k]) * last
        return existing + tokens_now + last <= self.capacity

    def add(self, tokens_now: int, steps: int) -> None:
        """Commit a job (after `fits` said yes, or to force one in)."""
        last = steps - 1
        offsets = self._table[_OFFSET]
        k = int(np.searchsorted(offsets, last, side="left"))
        if k == len(offsets) or offsets[k] != last:
            base = int(self._table[_BASE, k]) if k < len(offsets) else 0
            count = int(self._table[_COUNT, k]) if k < len(offsets) else 0
            headroom = self.capacity - base - (count + 1) * last
            self._table = np.insert(self._table, k, (last, base, count, headroom), axis=1)
        upto = k + 1
        table = self._table
        table[_BASE, :upto] += tokens_now
        table[_COUNT, :upto] += 1
        table[_HEADROOM, :upto] -= tokens_now + table[_OFFSET, :upto]
