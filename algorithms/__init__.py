"""Scheduling core and batch formers (docs/algorithms.md). Imports no web or ML framework.

`REGISTRY` maps the CLI names to batch-former classes; `make_batch_former(name, **params)`
builds one and rejects unknown names or parameters with a message listing the valid ones.
"""

from __future__ import annotations

from typing import Any

from algorithms.amax import AMaxBatchFormer
from algorithms.amin import AMinBatchFormer
from algorithms.asf import ASFBatchFormer
from algorithms.errors import CapacityExceededError, InvalidDecisionError, RequestRejectedError
from algorithms.fcfs import FCFSBatchFormer
from algorithms.hsf import HSFBatchFormer
from algorithms.loop import PREEMPTION_MODES, Executor, SchedulingLoop, StepOutcome, StepResult
from algorithms.mcsf import MCSFBatchFormer
from algorithms.protocols import BatchFormer
from algorithms.sf import SFBatchFormer
from algorithms.sorted_f import SortedFBatchFormer, SortedFContinuousBatchFormer
from algorithms.state import RunningSet, SchedulerState, WaitingQueue
from algorithms.types import BatchDecision, LengthInterval, RequestId, WaitingRequest
from algorithms.vllm import VLLMBatchFormer

REGISTRY: dict[str, type[BatchFormer]] = {
    cls.name: cls
    for cls in (
        VLLMBatchFormer,
        FCFSBatchFormer,
        SFBatchFormer,
        MCSFBatchFormer,
        SortedFBatchFormer,
        SortedFContinuousBatchFormer,
        AMaxBatchFormer,
        AMinBatchFormer,
        HSFBatchFormer,
        ASFBatchFormer,
    )
}

CLAIRVOYANT = frozenset(name for name, cls in REGISTRY.items() if cls.clairvoyant)


def refuse_clairvoyant(name: str) -> None:
    """Raise ValueError if policy `name` needs the true output lengths: no server knows them.

    Every serving front-end (worker pool, vLLM backend and plug-in, upstream gateway) calls this
    before building its batch former; unknown names are left to `make_batch_former`.
    """
    if name in CLAIRVOYANT:
        raise ValueError(
            f"policy {name!r} needs the true output lengths: simulator only "
            "(a server cannot know true lengths)"
        )


def make_batch_former(name: str, **params: Any) -> BatchFormer:
    """Build the batch former registered as `name` with keyword parameters."""
    try:
        cls = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose from {', '.join(REGISTRY)}") from None
    try:
        former = cls(**params)
    except TypeError as exc:
        raise ValueError(f"policy {name!r}: {exc}") from None
    return former


__all__ = [
    "CLAIRVOYANT",
    "REGISTRY",
    "PREEMPTION_MODES",
    "BatchDecision",
    "BatchFormer",
    "CapacityExceededError",
    "Executor",
    "InvalidDecisionError",
    "LengthInterval",
    "RequestId",
    "RequestRejectedError",
    "RunningSet",
    "SchedulerState",
    "SchedulingLoop",
    "StepOutcome",
    "StepResult",
    "WaitingQueue",
    "WaitingRequest",
    "make_batch_former",
    "refuse_clairvoyant",
]
