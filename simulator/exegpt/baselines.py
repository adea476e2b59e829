"""Baselines for `kvsched plan` (docs/planner.md): FT-style static batching and vLLM replicas.

Static batching [P, G]: N/d replicas at TP degree d run batches of B to the end of their longest
member (no early termination); throughput uses the expected batch maximum, the latency target
applies to the 99th percentile of the batch maximum. Continuous batching: our `vllm` batch
former on N independent workers, replayed by simulator.experiment on a saturated backlog.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.cost_model import CostModel
from simulator.exegpt.config import ClusterSpec, Workload
from simulator.exegpt.timing import Layout, kv_capacity_tokens, stage_time_s
from simulator.experiment import Experiment
from simulator.run import SimResult
from simulator.run import Workload as SimWorkload

STATIC_BATCHES = (1, 2, *range(4, 513, 4))
CONTINUOUS_BATCHES = (4, 8, 16, 32, 64, 128, 256, 512)


@dataclass(frozen=True, slots=True)
class Baseline:
    """The best setting of one baseline under the target (``setting`` {} when none meets it)."""

    name: str
    throughput_rps: float
    latency_s: float
    setting: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "throughput_rps": self.throughput_rps,
            "latency_s": self.latency_s,
            "setting": self.setting,
            "meets_target": bool(self.setting),
        }


def batch_max_tokens(outputs: np.ndarray, batch: int) -> tuple[float, int]:
    """(E[max], 99th percentile of max) of ``batch`` i.i.d. draws from the empirical outputs."""
    values, counts = np.unique(outputs, return_counts=True)
    cdf_max = (np.cumsum(counts) / outputs.size) ** batch
    pmf = np.diff(np.concatenate(([0.0], cdf_max)))
    q99 = int(values[min(int(np.searchsorted(cdf_max, 0.99)), values.size - 1)])
    return float((values * pmf).sum()), q99


def _static_batch_s(
    cost: CostModel, cluster: ClusterSpec, d: int, batch: int, prompt: float, length: float
) -> float:
    layout = Layout(1 if d == 1 else 0, 0 if d == 1 else 1, d)
    tokens = batch * prompt
    prefill = stage_time_s(cost, cluster, layout, tokens, 0.0, tokens)
    steps = max(length - 1.0, 0.0)  # the prefill produces the first token
    mean_kv = batch * (prompt + 1.0 + steps / 2.0)
    return prefill + steps * stage_time_s(cost, cluster, layout, 0.0, batch, mean_kv)


def static_batching(
    workload: Workload,
    cost: CostModel,
    cluster: ClusterSpec,
    target_s: float,
    degrees: tuple[int, ...] = (1, 2, 4, 8),
) -> Baseline:
    """Best FT-style (replicas x TP degree, batch) meeting the target on the max-length output."""
    prompt = workload.mean_prompt_tokens
    best = Baseline("static", 0.0, math.inf, {})
    for d in (d for d in degrees if d <= min(cluster.num_gpus, cluster.max_tp_degree)):
        replicas = cluster.num_gpus // d
        room = kv_capacity_tokens(cost, cluster, d)
        for batch in STATIC_BATCHES:
            mean_max, q99_max = batch_max_tokens(workload.output_tokens, batch)
            if batch * (prompt + q99_max) > room:
                break  # FT reserves the longest output for every member
            latency = _static_batch_s(cost, cluster, d, batch, prompt, q99_max)
            if latency > target_s:
                break  # latency grows with the batch
            rate = replicas * batch / _static_batch_s(cost, cluster, d, batch, prompt, mean_max)
            if rate > best.throughput_rps:
                setting = {"tp_degree": d, "replicas": replicas, "batch_size": batch}
                best = Baseline("static", rate, latency, setting)
    return best


def _sim_workload(workload: Workload, min_requests: int) -> SimWorkload:
    """The sample as a backlog, tiled to at least ``min_requests`` so the cap is exercised."""
    copies = -(-min_requests // len(workload))
    outputs = np.tile(np.asarray(workload.output_tokens, dtype=np.int64), copies)
    prompts = np.tile(np.asarray(workload.prompt_tokens, dtype=np.int64), copies)
    n = outputs.size
    return SimWorkload(np.zeros(n), prompts, outputs, outputs.copy(), outputs.copy())


def replica_metrics(result: SimResult, p99_output_tokens: int) -> tuple[float, float]:
    """(steady completions/s of one worker, fitted execution latency of the S99 output)."""
    log = result.log
    done = np.isfinite(log.completion_s)
    finish = np.sort(log.completion_s[done])
    lo, hi = int(0.1 * finish.size), int(np.ceil(0.9 * finish.size)) - 1
    span = float(finish[hi] - finish[lo])
    rate = (hi - lo) / span if span > 0 else finish.size / float(finish[-1])
    run_s = (log.completion_s - log.first_start_s)[done]
    slope, intercept = np.polyfit(log.output_tokens[done].astype(np.float64), run_s, 1)
    return rate, float(intercept + slope * p99_output_tokens)


def continuous_batching(
    workload: Workload,
    cost: CostModel,
    cluster: ClusterSpec,
    target_s: float,
    *,
    show_progress: bool = False,
) -> Baseline:
    """Best `vllm` max_batch_size on N independent workers (each replays the sample, tiled to
    at least 4 x the cap so the steady rate is not the drain of one admitted wave)."""
    best = Baseline("continuous", 0.0, math.inf, {})
    for cap in CONTINUOUS_BATCHES:
        sim_workload = _sim_workload(workload, 4 * cap)
        experiment = Experiment(sim_workload, cost, workload.source, "exact", 0, cap)
        result = experiment.run(["vllm"], show_progress=show_progress)["vllm"]
        rate, latency = replica_metrics(result, workload.p99_output_tokens)
        if latency > target_s:
            break
        if rate * cluster.num_gpus > best.throughput_rps:
            setting = {"policy": "vllm", "workers": cluster.num_gpus, "max_batch_size": cap}
            best = Baseline("continuous", rate * cluster.num_gpus, latency, setting)
    return best
