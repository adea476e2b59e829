"""Stage times of a pipeline with partial tensor parallelism [G] (docs/planner.md, "Model").

A group of g devices is cut into (g - k) single-device stages and k/d TP stages of d devices.
Layers are balanced so every stage takes the same time: a stage of degree d costs T/d + AR(d)
per unit of layers, where T is the single-device time of the pass from the `CostModel` and
AR(d) = 2(d-1)/d * (allreduce_base_ms + allreduce_ms_per_token * tokens). Invariant: with no
TP and one stage the stage time is exactly the cost model's iteration time.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.cost_model import CostModel
from simulator.exegpt.config import ClusterSpec


@dataclass(frozen=True, slots=True)
class Layout:
    """Pipeline shape: ``num_single`` one-device stages and ``num_groups`` TP stages."""

    num_single: int
    num_groups: int
    tp_degree: int

    def __post_init__(self) -> None:
        if self.num_single < 0 or self.num_groups < 0 or self.depth < 1 or self.tp_degree < 1:
            raise ValueError(f"a layout needs at least one stage, got {self!r}")

    @property
    def depth(self) -> int:
        """Pipeline depth P = (g - k) + k/d."""
        return self.num_single + self.num_groups

    @property
    def num_gpus(self) -> int:
        return self.num_single + self.num_groups * self.tp_degree


def make_layout(num_gpus: int, tp_degree: int, tp_gpus: int) -> Layout:
    """The layout of ``num_gpus`` devices with ``tp_gpus`` of them in TP groups of ``tp_degree``."""
    if tp_gpus % tp_degree or tp_gpus > num_gpus:
        raise ValueError(f"cannot place {tp_gpus} TP devices (degree {tp_degree}) on {num_gpus}")
    return Layout(num_gpus - tp_gpus, tp_gpus // tp_degree, tp_degree)


def full_pass_s(
    cost: CostModel, prefill_tokens: float, num_decode: float, kv_tokens: float
) -> float:
    """Single-device time of one pass over all layers (fractional loads allowed)."""
    return cost.iteration_time_s(prefill_tokens, num_decode, kv_tokens)


def allreduce_s(cluster: ClusterSpec, tp_degree: int, tokens: float) -> float:
    """Whole-model all-reduce time of one pass at TP degree d (0 for d = 1)."""
    if tp_degree == 1:
        return 0.0
    per_pass_ms = cluster.allreduce_base_ms + cluster.allreduce_ms_per_token * tokens
    return 2.0 * (tp_degree - 1) / tp_degree * per_pass_ms / 1000.0


def stage_time_s(
    cost: CostModel,
    cluster: ClusterSpec,
    layout: Layout,
    prefill_tokens: float,
    num_decode: float,
    kv_tokens: float,
) -> float:
    """Time one (balanced) stage spends on one micro-batch with the given load, hop included.

    Equal stage times give 1/tau = sum over stages of 1/(T/d_i + AR(d_i)); a pipeline of more
    than one stage adds ``p2p_ms`` per stage for the activation hand-off.
    """
    t_full = full_pass_s(cost, prefill_tokens, num_decode, kv_tokens)
    if t_full == 0.0:
        return 0.0
    rate = layout.num_single / t_full
    if layout.num_groups:
        tokens = prefill_tokens + num_decode
        d = layout.tp_degree
        rate += layout.num_groups / (t_full / d + allreduce_s(cluster, d, tokens))
    hop_s = cluster.p2p_ms / 1000.0 if layout.depth > 1 and not cost.unit else 0.0
    return 1.0 / rate + hop_s


def kv_capacity_tokens(cost: CostModel, cluster: ClusterSpec, num_gpus: int) -> float:
    """KV room of ``num_gpus`` devices holding one copy of the weights: g*M + (g-1)*W."""
    return num_gpus * cost.kv_capacity_tokens + (num_gpus - 1) * cluster.weight_kv_tokens
