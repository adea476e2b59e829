"""`FakeExecutor`: the loop tests' executor, with fixed true lengths and no cost model.

Request i finishes in the iteration that emits its `true_lengths[i]`-th output token (tokens an
earlier run kept count); every iteration lasts `iteration_s`. It records
what it was asked to do, per request: prompt tokens prefilled, tokens emitted and the output
index of every emitted token. The tests feed it the true lengths of a `tests.jobs.Jobs` (what
tests.factories.make_jobs and tests.strategies.jobs build, with no simulator behind them).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from numpy.typing import NDArray

from algorithms.batch import BatchView
from algorithms.loop import StepResult


class FakeExecutor:
    """Ends requests at their true lengths; every iteration lasts `iteration_s`."""

    def __init__(self, true_lengths: NDArray[np.int64], iteration_s: float = 1.0) -> None:
        self.true_lengths = np.asarray(true_lengths, dtype=np.int64)
        self.iteration_s = iteration_s
        self.prefilled: Counter[int] = Counter()
        self.emitted: Counter[int] = Counter()
        self.positions: dict[int, list[int]] = {}  # output index of every emitted token

    def execute(
        self, batch: BatchView, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> StepResult:
        for j, request_id in enumerate(batch.ids.tolist()):
            self.prefilled[request_id] += int(prefill_tokens[j])
            if produces[j]:
                self.emitted[request_id] += 1
                index = int(batch.resumed[j] + batch.generated[j])
                self.positions.setdefault(request_id, []).append(index)
        produced = batch.resumed + batch.generated + 1
        done = produces & (produced >= self.true_lengths[batch.ids])
        return StepResult(self.iteration_s, tuple(int(i) for i in batch.ids[done]))
