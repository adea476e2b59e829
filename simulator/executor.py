"""`SimulatedExecutor`: runs the loop's batches against a cost model and hidden true lengths.

It is the only place in the simulator that reads true output lengths (besides the hindsight
benchmark H-SF, which is handed them explicitly). An iteration prefills what the loop assigns
(whole prompts of admitted requests, or chunks; a resumed request's prompt includes the
tokens it kept, so the cost model charges their recomputation), decodes one token for every
running request past its prefill, and lasts what the cost model says.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from algorithms.loop import StepResult
from algorithms.state import RunningSet
from simulator.cost_model import CostModel


class SimulatedExecutor:
    """Executes iterations in simulated time; `true_lengths[i]` is request i's output length."""

    def __init__(self, true_lengths: NDArray[np.int64], cost_model: CostModel) -> None:
        self.true_lengths = np.asarray(true_lengths, dtype=np.int64)
        self.cost_model = cost_model

    def execute(
        self, running: RunningSet, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> StepResult:
        num_decode = int((produces & (running.prefill_left == 0)).sum())
        elapsed_s = self.cost_model.iteration_time_s(
            int(prefill_tokens.sum()), num_decode, running.next_step_tokens()
        )
        produced = running.resumed + running.generated + 1  # earlier runs' kept tokens count
        done = produces & (produced >= self.true_lengths[running.ids])
        finished = tuple(int(i) for i in running.ids[done]) if done.any() else ()
        return StepResult(elapsed_s, finished)
