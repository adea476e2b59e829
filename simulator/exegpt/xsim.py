"""XSimulator: expected-value timeline of an RRA or WAA configuration (docs/planner.md).

Implements the paper's timeline with our reconstruction: decode-batch coupling by Little's law
(B_D = B_E * E[ceil(d / N_D)], d = decode iterations per request) by default, the paper's
p_done form as an option (the paper is ambiguous; the Little form is the one a Monte-Carlo run
agrees with, see tests/simulator/test_exegpt_xsim.py). Invariant: predictions are deterministic and
report throughput/latency even when memory-infeasible, so branch-and-bound bounds stay valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from simulator.cost_model import CostModel
from simulator.exegpt.config import ClusterSpec, Config, IntArray, Prediction, Workload
from simulator.exegpt.timing import Layout, kv_capacity_tokens, make_layout, stage_time_s

Coupling = Literal["little", "paper"]


@dataclass(frozen=True, slots=True, eq=False)
class LengthStats:
    """What the timeline needs from a workload, computed once per workload.

    Attributes:
        mean_prompt_tokens: S_E.
        decode_steps: per sampled request, its decode iterations d = output - 1.
        p99_output_tokens: S99.
        mean_context_tokens: time-averaged KV context of a running decode member,
            sum(p*d + d(d+1)/2) / sum(d) (the length-biased form).
    """

    mean_prompt_tokens: float
    decode_steps: IntArray
    p99_output_tokens: int
    mean_context_tokens: float


def length_stats(workload: Workload) -> LengthStats:
    steps = workload.output_tokens - 1
    prompts = workload.prompt_tokens.astype(np.float64)
    total_steps = float(steps.sum())
    if total_steps > 0:
        held = prompts * steps + steps * (steps + 1) / 2.0
        context = float(held.sum()) / total_steps
    else:
        context = workload.mean_prompt_tokens
    return LengthStats(workload.mean_prompt_tokens, steps, workload.p99_output_tokens, context)


def phases_per_request(stats: LengthStats, decode_steps: int) -> IntArray:
    """ceil(d / N_D): encode phases a request's decode iterations span (0 when d = 0)."""
    return -(-stats.decode_steps // decode_steps)


def decode_batch_size(
    encode_batch: int, decode_steps: int, stats: LengthStats, coupling: Coupling = "little"
) -> float:
    """Expected B_D for a given B_E and N_D (WAA is N_D = 1)."""
    phases = phases_per_request(stats, decode_steps)
    if coupling == "little":
        return encode_batch * float(phases.mean())
    p_done = float((1.0 / np.maximum(phases, 1)).mean())
    return encode_batch / p_done


def phase_occupancy(
    decode_batch: float, encode_batch: int, decode_steps: int, stats: LengthStats
) -> np.ndarray:
    """Expected live decode batch at iterations u = 1..N_D of a phase.

    A request with d >= 1 finishes at iteration r = 1 + (d - 1) mod N_D of its last phase;
    B_E requests enter per phase, so occupancy(u) = B_D - B_E * P(d >= 1, r < u).
    """
    d = stats.decode_steps
    last = np.where(d >= 1, 1 + (d - 1) % decode_steps, 0)
    counts = np.bincount(last, minlength=decode_steps + 1)[1:].astype(np.float64)
    done_before = np.concatenate(([0.0], np.cumsum(counts)[:-1])) / d.size
    return np.asarray(np.maximum(decode_batch - encode_batch * done_before, 0.0))


def encode_time_s(
    cost: CostModel, cluster: ClusterSpec, layout: Layout, encode_batch: int, prompt: float
) -> tuple[float, float]:
    """(latency, stage-busy time) of encoding B_E prompts in min(P, B_E) micro-batches."""
    micro = min(layout.depth, encode_batch)
    tokens = encode_batch * prompt / micro
    stage = stage_time_s(cost, cluster, layout, tokens, 0.0, tokens)
    return (micro + layout.depth - 1) * stage, micro * stage


def decode_iteration_s(
    cost: CostModel,
    cluster: ClusterSpec,
    layout: Layout,
    batch: float,
    context: float,
    micro_batches: int | None = None,
) -> float:
    """One token for every member: max(m, P) stage slots of a micro-batch of batch/m."""
    if batch <= 0:
        return 0.0
    m = micro_batches or max(1, min(layout.depth, math.ceil(batch)))
    b = batch / m
    return max(m, layout.depth) * stage_time_s(cost, cluster, layout, 0.0, b, b * context)


def predict(
    config: Config, stats: LengthStats, cost: CostModel, cluster: ClusterSpec
) -> Prediction:
    """Throughput (sequences/s over all devices) and latency of the S99-length output."""
    if config.num_gpus > cluster.num_gpus:
        raise ValueError(f"config uses {config.num_gpus} devices, cluster has {cluster.num_gpus}")
    if config.policy == "rra":
        return _predict_rra(config, stats, cost, cluster)
    return _predict_waa(config, stats, cost, cluster)


def _predict_rra(
    config: Config, stats: LengthStats, cost: CostModel, cluster: ClusterSpec
) -> Prediction:
    layout = make_layout(config.num_gpus, config.tp_degree, config.tp_gpus)
    b_e, n_d, b_d = config.encode_batch, config.decode_steps, float(config.decode_batch)
    t_enc, _ = encode_time_s(cost, cluster, layout, b_e, stats.mean_prompt_tokens)
    occupancy = phase_occupancy(b_d, b_e, n_d, stats)
    ctx = stats.mean_context_tokens
    t_iter = np.array([decode_iteration_s(cost, cluster, layout, o, ctx) for o in occupancy])
    throughput = b_e / (t_enc + float(t_iter.sum()))
    steps = stats.p99_output_tokens - 1
    full = max(steps - 1, 0) // n_d
    rest = steps - full * n_d
    latency = t_enc * (1 + full) + full * float(t_iter.sum()) + float(t_iter[:rest].sum())
    need = cluster.kv_headroom * b_d * ctx + b_e * stats.mean_prompt_tokens
    room = kv_capacity_tokens(cost, cluster, config.num_gpus)
    reason = "" if need <= room else f"KV needs {need:.0f} tokens, room {room:.0f}"
    return Prediction(throughput, latency, not reason, reason)


def _predict_waa(
    config: Config, stats: LengthStats, cost: CostModel, cluster: ClusterSpec
) -> Prediction:
    enc_tp, dec_tp = config.tp_split()
    enc = make_layout(config.encode_gpus, config.tp_degree, enc_tp)
    dec = make_layout(config.decode_gpus, config.tp_degree, dec_tp)
    b_e = config.encode_batch
    b_d = float(config.decode_batch)
    ctx = stats.mean_context_tokens
    t_enc, enc_period = encode_time_s(cost, cluster, enc, b_e, stats.mean_prompt_tokens)
    tau_d = decode_iteration_s(cost, cluster, dec, b_d, ctx, config.micro_batches)
    throughput = b_e / max(enc_period, tau_d)
    tau_d = _encode_bound_iteration_s(config, stats, cost, cluster, throughput, tau_d)
    prompt_kv = b_e * stats.mean_prompt_tokens
    transfer_s = 0.0 if cost.unit else cluster.kv_transfer_ms_per_token * prompt_kv / 1000.0
    latency = t_enc + transfer_s + tau_d * stats.p99_output_tokens
    dec_need = cluster.kv_headroom * b_d * ctx
    reasons = []
    if dec_need > (room := kv_capacity_tokens(cost, cluster, config.decode_gpus)):
        reasons.append(f"decode KV needs {dec_need:.0f} tokens, room {room:.0f}")
    if 2 * prompt_kv > (room := kv_capacity_tokens(cost, cluster, config.encode_gpus)):
        reasons.append(f"encode KV needs {2 * prompt_kv:.0f} tokens, room {room:.0f}")
    return Prediction(throughput, latency, not reasons, "; ".join(reasons))


def _encode_bound_iteration_s(
    config: Config,
    stats: LengthStats,
    cost: CostModel,
    cluster: ClusterSpec,
    throughput: float,
    tau_d: float,
) -> float:
    """Decode iteration time when the encoder limits throughput [D]: the decode side keeps
    iterating with the smaller steady batch b = rate * E[d] * tau(b) (Little), a fixed point."""
    dec = make_layout(config.decode_gpus, config.tp_degree, config.tp_split()[1])
    mean_steps = float(stats.decode_steps.mean())
    batch = float(config.decode_batch)
    for _ in range(50):
        wanted = min(float(config.decode_batch), throughput * mean_steps * tau_d)
        if abs(wanted - batch) < 1e-6 * max(batch, 1.0):
            break
        batch = wanted
        micro = min(config.micro_batches, max(1, math.ceil(batch)))
        tau_d = decode_iteration_s(cost, cluster, dec, batch, stats.mean_context_tokens, micro)
    return tau_d
