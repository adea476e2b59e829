"""The batch-former contract: one method, called once per iteration by `SchedulingLoop`.

A former sees a `SchedulerState` and returns a `BatchDecision`. It is deterministic for a given
state and constructor arguments and must not mutate the state; the loop validates and applies
the decision. Per-request adaptive knowledge (A_min's rising lower bound) is derived from the
request records, not stored in the former.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from algorithms.state import SchedulerState
from algorithms.types import BatchDecision, WaitingRequest


class BatchFormer(Protocol):
    """Decides, each iteration, which waiting requests start and which running ones are evicted.

    Attributes:
        name: the registry / CLI name.
        can_evict: whether the former may return a non-empty `evict`. The loop rejects evictions
            from a former that says False, and treats a capacity overflow of such a former as a
            bug unless a running request outlived its predicted upper bound.
        clairvoyant: whether it plans with the true output lengths (constructed with
            `true_lengths`). Only the simulator has them; every serving front-end refuses such a
            former through `algorithms.refuse_clairvoyant`.
    """

    name: ClassVar[str]
    can_evict: ClassVar[bool]
    clairvoyant: ClassVar[bool]

    def waiting_key(self, request: WaitingRequest) -> Any:
        """Sort key of the waiting queue: the loop keeps waiting requests in this order."""
        ...

    def planning_length(self, request: WaitingRequest) -> int:
        """Output length the former plans with; the loop rejects `prompt + this > M` up front."""
        ...

    def form_batch(self, state: SchedulerState) -> BatchDecision:
        """Return the admissions and evictions for iteration `state.step`."""
        ...


class IntervalRefiner(Protocol):
    """Tightens the interval of running requests as they generate (docs/predictors.md).

    Called by the loop before each batch formation for the running requests that have
    produced at least one token; arrays are int64 and aligned. Must return lo >= generated + 1
    and lo <= hi <= max_tokens. The batch formers then plan with the refined interval: A_min's
    lower bound, and the upper bound of a request that outlived its prediction.
    """

    def refine(
        self,
        lo: NDArray[np.int64],
        hi: NDArray[np.int64],
        generated: NDArray[np.int64],
        max_tokens: NDArray[np.int64],
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]: ...


@runtime_checkable
class AdmissionRefiner(IntervalRefiner, Protocol):
    """A refiner that re-predicts from the interval each request was admitted with.

    The loop calls `refine_admitted` instead of `refine` when the refiner has it: the admitted
    interval stands for the prompt's own prediction (the loop keeps no prompt text), so the
    result may move either bound either way while staying a function of (admitted interval,
    generated, max_tokens). Same output contract as `refine`.
    """

    def refine_admitted(
        self,
        admitted_lo: NDArray[np.int64],
        admitted_hi: NDArray[np.int64],
        lo: NDArray[np.int64],
        hi: NDArray[np.int64],
        generated: NDArray[np.int64],
        max_tokens: NDArray[np.int64],
    ) -> tuple[NDArray[np.int64], NDArray[np.int64]]: ...
