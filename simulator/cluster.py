"""Cluster mode of the discrete-event simulator (issue 6; docs/planner.md, "XSimulator").

Public API:
    simulate_cluster(config, workload, cost, cluster, *, progress=None) -> ClusterResult
    simulate_replicas(workload, cost, num_replicas, *, policy="vllm", max_batch_size=None,
                      progress=None) -> ClusterResult      # plain continuous batching, N copies
    ClusterResult: start_s / finish_s / latency_s per request, throughput_rps (steady state),
        p99_length_latency_s (latency of the p99-length output), p99_latency_s (over requests),
        fits_memory, prediction() -> simulator.exegpt.config.Prediction, summary() -> dict
    kv_transfer_ms_per_token(kv_bytes_per_token, link_bytes_per_s) -> float

Request level, saturated backlog (every request waiting at t=0), real sampled
lengths. RRA: all devices form one pipeline that alternates an encode phase (up to B_E queries,
capped so the decode batch stays <= B_D, in min(P, B) micro-batches) with N_D decode iterations
(min(P, batch) micro-batches), the decode drain charged at the end of each block. WAA: an encode
pipeline feeds a decode pipeline asynchronously; an encoded batch's KV (prompt tokens x
ClusterSpec.kv_transfer_ms_per_token, one transfer at a time on the link) must arrive before it
joins the decode batch at an iteration boundary; the encoder waits while the decode batch plus
batches in flight would exceed B_D. Stage times come from simulator.exegpt.timing (TP degree and
pipeline depth as documented there). Latency = last token - start of the query's encode.
Building blocks: `DecodeBatch` holds the running queries as arrays (KV held, decode iterations
left); `Pipeline` times micro-batches on a pipeline layout with
`simulator.exegpt.timing.stage_time_s` (the planner's stage-time model, so simulation and
XSimulator share the per-stage costs); `RunState` is the state shared by the RRA and WAA loops.
Invariant: every request is encoded once and finishes exactly once, and a query is in at most
one place at a time (waiting, in flight, running, finished).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from simulator.cost_model import CostModel
from simulator.exegpt.config import ClusterSpec, Config, Prediction, Workload
from simulator.exegpt.timing import Layout, kv_capacity_tokens, make_layout, stage_time_s
from simulator.run import Workload as RunWorkload
from simulator.run import simulate

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
Progress = Callable[[int], None]
NEAREST_FRACTION = 0.01  # p99-length latency: mean over the 1% of requests nearest S99 ...
NEAREST_MIN = 10  # ... but at least this many


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


def kv_transfer_ms_per_token(kv_bytes_per_token: float, link_bytes_per_s: float) -> float:
    """WAA hand-over cost per prompt token: bytes per token / link bandwidth, in ms.

    E.g. Llama-3-8B in BF16 holds 131,072 KV bytes per token; over a 25 GB/s PCIe 4.0 x16
    link that is 0.0052 ms per token (ClusterSpec's default)."""
    if not kv_bytes_per_token >= 0 or not link_bytes_per_s > 0:
        raise ValueError("kv_bytes_per_token must be >= 0 and link_bytes_per_s > 0")
    return 1000.0 * kv_bytes_per_token / link_bytes_per_s


@dataclass(frozen=True, slots=True, eq=False)
class ClusterResult:
    """One simulated run; arrays are indexed like the workload's requests."""

    label: str
    num_gpus: int
    start_s: FloatArray
    finish_s: FloatArray
    output_tokens: IntArray
    peak_kv_tokens: int
    kv_capacity_tokens: float
    num_encode_batches: int
    num_decode_iterations: int

    @property
    def latency_s(self) -> FloatArray:
        return self.finish_s - self.start_s

    @property
    def makespan_s(self) -> float:
        return float(self.finish_s.max())

    @property
    def throughput_rps(self) -> float:
        """Sequences per second in steady state (first and last 10% of completions cut)."""
        return steady_throughput(self.finish_s)

    @property
    def p99_length_latency_s(self) -> float:
        """Latency of a p99-length output: mean over the requests whose output length is
        nearest S99 (1% of them, at least 10)."""
        s99 = float(np.ceil(np.quantile(self.output_tokens, 0.99)))
        count = max(NEAREST_MIN, int(NEAREST_FRACTION * len(self.output_tokens)))
        nearest = np.argsort(np.abs(self.output_tokens - s99), kind="stable")[:count]
        return float(self.latency_s[nearest].mean())

    @property
    def p99_latency_s(self) -> float:
        return float(np.quantile(self.latency_s, 0.99))

    @property
    def fits_memory(self) -> bool:
        return self.peak_kv_tokens <= self.kv_capacity_tokens

    def prediction(self) -> Prediction:
        """The run in XSimulator's terms, for prediction-error reports."""
        reason = "" if self.fits_memory else "peak decode KV exceeds the devices' KV capacity"
        return Prediction(self.throughput_rps, self.p99_length_latency_s, self.fits_memory, reason)

    def summary(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "num_gpus": self.num_gpus,
            "requests": len(self.finish_s),
            "throughput_rps": self.throughput_rps,
            "overall_throughput_rps": len(self.finish_s) / self.makespan_s,
            "makespan_s": self.makespan_s,
            "p99_length_latency_s": self.p99_length_latency_s,
            "p99_latency_s": self.p99_latency_s,
            "mean_latency_s": float(self.latency_s.mean()),
            "peak_kv_tokens": self.peak_kv_tokens,
            "kv_capacity_tokens": self.kv_capacity_tokens,
            "fits_memory": self.fits_memory,
            "encode_batches": self.num_encode_batches,
            "decode_iterations": self.num_decode_iterations,
        }


def _result(run: RunState, config: Config, capacity: float) -> ClusterResult:
    if np.isnan(run.finish_s).any():
        raise RuntimeError("cluster simulation ended with unfinished requests")
    return ClusterResult(
        config.label(), config.num_gpus, run.start_s, run.finish_s,
        run.workload.output_tokens, run.peak_kv_tokens, capacity,
        run.num_encodes, run.num_iterations,
    )  # fmt: skip


def simulate_cluster(
    config: Config,
    workload: Workload,
    cost: CostModel,
    cluster: ClusterSpec,
    *,
    progress: Progress | None = None,
) -> ClusterResult:
    """Run `config` over every request of `workload` (see the module docstring)."""
    if config.num_gpus > cluster.num_gpus:
        raise ValueError(
            f"config uses {config.num_gpus} devices, the cluster has {cluster.num_gpus}"
        )
    run = RunState.of(workload, progress)
    if config.policy == "rra":
        pipeline = Pipeline.of(cost, cluster, config.num_gpus, config.tp_degree, config.tp_gpus)
        _run_rra(config, pipeline, run)
        capacity = kv_capacity_tokens(cost, cluster, config.num_gpus)
    else:
        on_encode, on_decode = config.tp_split()
        d = config.tp_degree
        encoder = Pipeline.of(cost, cluster, config.encode_gpus, d, on_encode)
        decoder = Pipeline.of(cost, cluster, config.decode_gpus, d, on_decode)
        _run_waa(config, encoder, decoder, cluster.kv_transfer_ms_per_token / 1000.0, run)
        capacity = kv_capacity_tokens(cost, cluster, config.decode_gpus)
    return _result(run, config, capacity)


def _encode_phase(
    config: Config, pipeline: Pipeline, batch: DecodeBatch, run: RunState, now: float
) -> float:
    """RRA: encode up to B_E queries (B_D caps the decode batch); returns the new clock."""
    count = min(config.encode_batch, config.decode_batch - len(batch), run.pending())
    if count <= 0:
        return now
    ids = run.take(count, now)
    prompts = run.workload.prompt_tokens[ids]
    outputs = run.workload.output_tokens[ids]
    now += pipeline.pass_s(encode_times(pipeline, prompts, min(pipeline.depth, count)))
    more = outputs > 1
    run.finish(ids[~more], now)
    batch.add(ids[more], prompts[more], outputs[more])
    run.peak_kv_tokens = max(run.peak_kv_tokens, batch.kv_tokens())
    return now


def _run_rra(config: Config, pipeline: Pipeline, run: RunState) -> None:
    batch = DecodeBatch()
    now = 0.0
    while run.pending() or len(batch):
        now = _encode_phase(config, pipeline, batch, run, now)
        last: list[float] = []
        for _ in range(config.decode_steps):
            if not len(batch):
                break
            last = batch.times(pipeline, pipeline.depth)
            now += pipeline.period_s(last)
            run.num_iterations += 1
            run.finish(batch.step(), now)
            run.peak_kv_tokens = max(run.peak_kv_tokens, batch.kv_tokens())
        if last:
            now += (pipeline.depth - 1) * max(last)  # drain before the next encode phase


@dataclass(slots=True)
class _InFlight:
    """WAA: encoded batches on their way to the decode pipeline."""

    batches: deque[tuple[float, IntArray]]
    queries: int = 0
    encoder_free_s: float = 0.0
    encoded_s: float = 0.0
    link_free_s: float = 0.0
    blocked: bool = False


def _launch_encodes(
    config: Config, encoder: Pipeline, xfer_s_per_token: float, decode_size: int,
    flight: _InFlight, run: RunState, now: float,
) -> None:  # fmt: skip
    """Start every encode batch the decode side has room for (room only grows until `now`'s
    next boundary, so batches may be scheduled ahead of the decode clock)."""
    if flight.blocked:
        flight.encoder_free_s = max(flight.encoder_free_s, now)
    while run.pending():
        count = min(config.encode_batch, config.decode_batch, run.pending())
        if decode_size + flight.queries + count > config.decode_batch:
            flight.blocked = True
            return
        flight.blocked = False
        ids = run.take(count, flight.encoder_free_s)
        prompts = run.workload.prompt_tokens[ids]
        (stage_s,) = encode_times(encoder, prompts, 1)
        start = flight.encoder_free_s
        flight.encoder_free_s = start + stage_s
        flight.encoded_s = max(start + encoder.depth * stage_s, flight.encoded_s + stage_s)
        more = run.workload.output_tokens[ids] > 1
        run.finish(ids[~more], flight.encoded_s)
        if more.any():
            xfer = xfer_s_per_token * float(prompts[more].sum())
            flight.link_free_s = max(flight.encoded_s, flight.link_free_s) + xfer
            flight.batches.append((flight.link_free_s, ids[more]))
            flight.queries += int(more.sum())


def _run_waa(
    config: Config, encoder: Pipeline, decoder: Pipeline, xfer_s_per_token: float, run: RunState
) -> None:
    batch = DecodeBatch()
    flight = _InFlight(deque())
    now = 0.0
    workload = run.workload
    while run.pending() or len(batch) or flight.batches:
        _launch_encodes(config, encoder, xfer_s_per_token, len(batch), flight, run, now)
        while flight.batches and flight.batches[0][0] <= now:
            _, ids = flight.batches.popleft()
            flight.queries -= len(ids)
            batch.add(ids, workload.prompt_tokens[ids], workload.output_tokens[ids])
        run.peak_kv_tokens = max(run.peak_kv_tokens, batch.kv_tokens())
        if not len(batch):
            if flight.batches:
                now = max(now, flight.batches[0][0])
            continue
        now += decoder.period_s(batch.times(decoder, config.micro_batches))
        run.num_iterations += 1
        run.finish(batch.step(), now)


def simulate_replicas(
    workload: Workload,
    cost: CostModel,
    num_replicas: int,
    *,
    policy: str = "vllm",
    max_batch_size: int | None = None,
    progress: Progress | None = None,
) -> ClusterResult:
    """Plain continuous batching on `num_replicas` independent devices (simulator.run): request
    i goes to replica i mod N, all waiting at t=0; latency from first admission to last token."""
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 1:
        raise ValueError(f"num_replicas must be an integer >= 1, got {num_replicas!r}")
    n = len(workload)
    start, finish = np.full(n, np.nan), np.full(n, np.nan)
    peak = 0
    iterations = 0
    for replica in range(num_replicas):
        ids = np.arange(replica, n, num_replicas)
        if not len(ids):
            continue
        outputs = workload.output_tokens[ids]
        part = RunWorkload(
            np.zeros(len(ids)), workload.prompt_tokens[ids], outputs, outputs, outputs
        )
        sim = simulate(part, policy, cost, max_batch_size=max_batch_size, progress=progress)
        if sim.log.rejected.any():
            raise ValueError(f"{policy}: {int(sim.log.rejected.sum())} requests do not fit in KV")
        start[ids], finish[ids] = sim.log.first_start_s, sim.log.completion_s
        peak = max(peak, sim.log.peak_kv_tokens)
        iterations += sim.log.num_iterations
    label = f"{policy} x{num_replicas}" + (f" max_batch={max_batch_size}" if max_batch_size else "")
    return ClusterResult(
        label, num_replicas, start, finish, workload.output_tokens, peak,
        float(cost.kv_capacity_tokens), n, iterations,
    )  # fmt: skip
