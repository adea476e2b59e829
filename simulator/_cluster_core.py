"""Building blocks of the cluster simulation (simulator.cluster; docs/planner.md).

`DecodeBatch` holds the running queries as arrays (KV held, decode iterations left);
`Pipeline` times micro-batches on a pipeline layout with `simulator.exegpt.timing.stage_time_s`
(the planner's stage-time model, so simulation and XSimulator share the per-stage costs).
Invariant: a query is in at most one place (waiting, in flight, running, finished).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from simulator.cost_model import CostModel
from simulator.exegpt.config import ClusterSpec, Workload
from simulator.exegpt.timing import Layout, make_layout, stage_time_s

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class Pipeline:
    """One pipeline of devices (all of RRA, or WAA's encode or decode side)."""

    cost: CostModel
    cluster: ClusterSpec
    layout: Layout

    @classmethod
    def of(
        cls, cost: CostModel, cluster: ClusterSpec, gpus: int, tp_degree: int, tp_gpus: int
    ) -> Pipeline:
        if tp_gpus == 0:
            tp_degree = 1
        return cls(cost, cluster, make_layout(gpus, tp_degree, tp_gpus))

    @property
    def depth(self) -> int:
        return self.layout.depth

    def stage_times(
        self, prefill_tokens: FloatArray, num_decode: FloatArray, kv_tokens: FloatArray
    ) -> list[float]:
        """Stage time of each micro-batch (one entry per micro-batch load)."""
        return [
            stage_time_s(self.cost, self.cluster, self.layout, float(p), float(d), float(k))
            for p, d, k in zip(prefill_tokens, num_decode, kv_tokens, strict=True)
        ]

    def split(
        self, prefill: IntArray, decode: IntArray, kv: IntArray, num_micro: int
    ) -> list[float]:
        """Stage times of the rows split round-robin into `num_micro` micro-batches."""
        groups = np.arange(len(kv)) % num_micro
        loads = [
            np.bincount(groups, weights=column, minlength=num_micro).astype(np.float64)
            for column in (prefill, decode, kv)
        ]
        return self.stage_times(*loads)

    def pass_s(self, times: Sequence[float]) -> float:
        """One batch of micro-batches through the whole pipeline: fill, stream, drain."""
        return float(sum(times) + (self.depth - 1) * max(times))

    def period_s(self, times: Sequence[float]) -> float:
        """One decode iteration of every micro-batch: stage 1 busy time, or one lap of the
        pipeline per micro-batch, whichever is longer (max(P, m) * t)."""
        return float(max(sum(times), self.depth * max(times)))


class DecodeBatch:
    """Running queries: id, KV tokens held (prompt + generated), decode iterations left."""

    def __init__(self) -> None:
        self.ids: IntArray = np.zeros(0, dtype=np.int64)
        self.held: IntArray = np.zeros(0, dtype=np.int64)
        self.left: IntArray = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, ids: IntArray, prompts: IntArray, outputs: IntArray) -> None:
        """Queries just encoded (their first token is out): outputs - 1 decodes to go."""
        self.ids = np.concatenate((self.ids, ids))
        self.held = np.concatenate((self.held, prompts + 1))
        self.left = np.concatenate((self.left, outputs - 1))

    def kv_tokens(self) -> int:
        return int(self.held.sum())

    def times(self, pipeline: Pipeline, num_micro: int) -> list[float]:
        """Stage times of the next decode iteration split into up to `num_micro` micro-batches."""
        n = len(self.ids)
        ones = np.ones(n, dtype=np.int64)
        return pipeline.split(np.zeros(n, dtype=np.int64), ones, self.held + 1, min(num_micro, n))

    def step(self) -> IntArray:
        """One token for every query; returns (and drops) the queries that are done."""
        self.held += 1
        self.left -= 1
        done = self.left <= 0
        finished = self.ids[done]
        keep = ~done
        self.ids, self.held, self.left = self.ids[keep], self.held[keep], self.left[keep]
        return finished


def encode_times(pipeline: Pipeline, prompts: IntArray, num_micro: int) -> list[float]:
    """Stage times of an encode batch (prefill, KV = prompt + 1 each) in `num_micro` parts."""
    zeros = np.zeros(len(prompts), dtype=np.int64)
    return pipeline.split(prompts, zeros, prompts + 1, num_micro)


def steady_throughput(finish_s: FloatArray, trim: float = 0.1) -> float:
    """Completions per second between the `trim` and 1 - `trim` quantiles of completion order
    (ramp-up and drain excluded); all completions over the makespan below 20 requests."""
    n = len(finish_s)
    ordered = np.sort(finish_s)
    if n < 20:
        return n / float(ordered[-1]) if ordered[-1] > 0 else float("inf")
    lo, hi = int(trim * n), int(np.ceil((1 - trim) * n)) - 1
    span = float(ordered[hi] - ordered[lo])
    return (hi - lo) / span if span > 0 else float("inf")


@dataclass(slots=True)
class RunState:
    """Mutable state shared by the RRA and WAA loops."""

    workload: Workload
    progress: Progress
    start_s: FloatArray
    finish_s: FloatArray
    next_query: int = 0
    peak_kv_tokens: int = 0
    num_encodes: int = 0
    num_iterations: int = 0

    @classmethod
    def of(cls, workload: Workload, progress: Progress | None) -> RunState:
        n = len(workload)
        nan = np.full(n, np.nan)
        return cls(workload, progress or (lambda _: None), nan, nan.copy())

    def take(self, count: int, now_s: float) -> IntArray:
        """The next `count` queries of the backlog, their encode starting at `now_s`."""
        ids = np.arange(self.next_query, self.next_query + count, dtype=np.int64)
        self.next_query += count
        self.start_s[ids] = now_s
        self.num_encodes += 1
        return ids

    def finish(self, ids: IntArray, now_s: float) -> None:
        self.finish_s[ids] = now_s
        if len(ids):
            self.progress(len(ids))

    def pending(self) -> int:
        return len(self.workload) - self.next_query
