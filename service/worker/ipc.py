"""Messages between the worker pool and its worker processes (docs/architecture.md).

Inbound (pool -> worker): `Submit`, `Cancel`, `Shutdown`. Outbound (worker -> pool): `Events`
(one iteration's `TokenEvent`s and `Prefilled` hand-overs), `Stats` (`WorkerStats`),
`WorkerReady`, `WorkerFailed`.
All are small frozen records that pickle cheaply; the worker matches `Inbound` messages and the
pool `Outbound` ones on their type (`match`, checked by mypy), never on strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from service.protocol import GenerationRequest, TokenEvent, WorkerStats


@dataclass(frozen=True, slots=True)
class KVHandover:
    """A request's KV cache as its prefill worker computed it, on its way to a decode worker.

    `arrays`: keys then values of each layer, host (numpy) copies of the device tensors, each
    [1, kv_heads, num_tokens, head_dim]; `dtype` is the torch dtype's name (a bfloat16 or
    float16 tensor travels as its raw 16-bit integers). `num_tokens` = prompt + output - 1: the
    last output token's KV is computed by the decode worker's first step. `started_s`
    (time.time(), one host clock) and `export_s` time the hand-over.
    """

    num_tokens: int
    dtype: str
    arrays: tuple[NDArray[Any], ...]
    started_s: float
    export_s: float

    @property
    def nbytes(self) -> int:
        return int(sum(np.asarray(a).nbytes for a in self.arrays))


@dataclass(frozen=True, slots=True)
class Submit:
    """Queue a request on the worker (it answers with `Events`, the last one final); `kv`: the
    KV cache of a hand-over from a prefill worker (hf engine), None otherwise."""

    request: GenerationRequest
    kv: KVHandover | None = None


@dataclass(frozen=True, slots=True)
class Cancel:
    """Drop a request wherever it is; the worker frees its KV and answers with "abort"."""

    request_id: str

    def __post_init__(self) -> None:
        if not self.request_id:
            raise ValueError("Cancel needs a request_id")


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Stop now: the worker drops what it holds and exits 0 (the pool has failed it already)."""


@dataclass(frozen=True, slots=True)
class Prefilled:
    """A prefill worker produced the request's first token and released it: the pool hands it
    (with `token_ids`, its output so far, and `kv`, its KV cache if the engine exports it) to a
    decode worker."""

    request_id: str
    token_ids: tuple[int, ...]
    kv: KVHandover | None = None


@dataclass(frozen=True, slots=True)
class Events:
    """The token events one worker iteration produced (at most one per request), then the
    requests it handed over (`prefilled`, after their token events)."""

    worker_id: int
    events: tuple[TokenEvent, ...]
    prefilled: tuple[Prefilled, ...] = ()


@dataclass(frozen=True, slots=True)
class Stats:
    """A worker's periodic report (gauges + counters since the previous report)."""

    stats: WorkerStats


@dataclass(frozen=True, slots=True)
class WorkerReady:
    """The worker built its engine, loop and predictor and accepts requests."""

    worker_id: int
    pid: int
    engine: str
    kv_capacity_tokens: int
    max_model_len: int


@dataclass(frozen=True, slots=True)
class WorkerFailed:
    """The worker hit an exception and is exiting non-zero; `error` is one line."""

    worker_id: int
    error: str
    traceback: str = ""


Inbound = Submit | Cancel | Shutdown
Outbound = Events | Stats | WorkerReady | WorkerFailed
