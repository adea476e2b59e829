"""`BatchView`: the read-only picture of one iteration's batch that the loop hands its executor.

The loop owns the mutable `RunningSet`; an executor only reads the batch. A view holds copies of
the running set's per-row arrays, marked read-only, so no executor can change the scheduler's
bookkeeping, and a view an executor keeps does not change when the loop advances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from algorithms.state import RunningSet

IntArray = NDArray[np.int64]


def _frozen(array: IntArray) -> IntArray:
    out = array.copy()
    out.setflags(write=False)
    return out


@dataclass(frozen=True, slots=True)
class BatchView:
    """Rows of the batch in admission order (the `RunningSet`'s row order) before an iteration.

    `generated[j]` counts tokens produced by row j's current run before this iteration,
    `resumed[j]` the output tokens of earlier runs that `prompt_tokens[j]` includes (its next
    token is number resumed + generated + 1), `prefill_left[j]` the prompt tokens not yet
    prefilled. `kv_tokens` is what the batch holds in this iteration (one new token per row:
    `RunningSet.next_step_tokens`). Every array is read-only.
    """

    ids: IntArray
    prompt_tokens: IntArray
    generated: IntArray
    resumed: IntArray
    prefill_left: IntArray
    kv_tokens: int

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def of(cls, running: RunningSet) -> BatchView:
        """A read-only snapshot of `running` as it stands now."""
        return cls(
            _frozen(running.ids),
            _frozen(running.prompt_tokens),
            _frozen(running.generated),
            _frozen(running.resumed),
            _frozen(running.prefill_left),
            running.next_step_tokens(),
        )
