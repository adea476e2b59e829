"""`SimulatedExecutor`: runs the loop's batches against a cost model and hidden true lengths.

It is the only place in the simulator that reads true output lengths (besides the hindsight
benchmark H-SF, which is handed them explicitly). An iteration prefills what the loop assigns
(whole prompts of admitted requests, or chunks; a resumed request's prompt includes the
tokens it kept, so the cost model charges their recomputation), decodes one token for every
running request past its prefill, and lasts what the cost model says (`iteration_time_s`, the
one formula the simulator and the service's sim engine share).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from algorithms.batch import BatchView
from algorithms.loop import StepResult
from simulator.cost_model import CostModel


def iteration_time_s(
    cost_model: CostModel,
    batch: BatchView,
    prefill_tokens: NDArray[np.int64],
    produces: NDArray[np.bool_],
    kv_ready: NDArray[np.bool_] | None = None,
) -> float:
    """Cost-model seconds of one iteration of `batch`: the prefill tokens it computes, one
    decode per row that emits a token past its prefill, and the KV the batch holds.

    `kv_ready` marks rows whose KV arrived by transfer (a hand-over; None: none): they compute
    none of their prefill, and a producing one costs a decode step.
    """
    if kv_ready is None:
        kv_ready = np.zeros(len(batch), dtype=np.bool_)
    decoding = produces & ((batch.prefill_left == 0) | kv_ready)
    return cost_model.iteration_time_s(
        int(prefill_tokens[~kv_ready].sum()), int(decoding.sum()), batch.kv_tokens
    )


class SimulatedExecutor:
    """Executes iterations in simulated time; `true_lengths[i]` is request i's output length.

    It has no model: its `StepResult`s carry no tokens and no finish reasons."""

    def __init__(self, true_lengths: NDArray[np.int64], cost_model: CostModel) -> None:
        self.true_lengths = np.asarray(true_lengths, dtype=np.int64)
        self.cost_model = cost_model

    def execute(
        self, batch: BatchView, prefill_tokens: NDArray[np.int64], produces: NDArray[np.bool_]
    ) -> StepResult:
        elapsed_s = iteration_time_s(self.cost_model, batch, prefill_tokens, produces)
        produced = batch.resumed + batch.generated + 1  # earlier runs' kept tokens count
        done = produces & (produced >= self.true_lengths[batch.ids])
        finished = tuple(int(i) for i in batch.ids[done]) if done.any() else ()
        return StepResult(elapsed_s, finished)
