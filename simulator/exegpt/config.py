"""Shared ExeGPT planner types: cluster, configuration, workload, result.

See docs/planner.md ("Model", "XSimulator"); tags [P]/[D]/[G] are explained there.

A `Config` is one point of the search space (policy RRA or WAA plus its knobs); a `Workload` is
the input/output length sample the planner reasons about; a `Prediction` is what XSimulator (or
a full cluster simulation) says about a configuration. Invariant: every type is frozen and
validates itself, so a `Config` that exists is internally consistent (GPU counts add up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
from numpy.typing import NDArray

from simulator.cost_model import (
    LLAMA3_8B_KV_BYTES_PER_TOKEN,
    LLAMA3_8B_WEIGHT_BYTES,
)
from simulator.traces import Trace

Policy = Literal["rra", "waa"]
POLICIES: Final[tuple[Policy, ...]] = ("rra", "waa")
IntArray = NDArray[np.int64]

# Weights in KV-token units for the presets (weights bytes / KV bytes per token), [G]
# (docs/planner.md, "Memory"). llama2-70b: 2 * 68.98e9 bytes of BF16 weights / (2 * 80 layers * 8 kv
# heads * 128 * 2 bytes).
PRESET_WEIGHT_KV_TOKENS: Final[dict[str, int]] = {
    "llama3-8b-h100": LLAMA3_8B_WEIGHT_BYTES // LLAMA3_8B_KV_BYTES_PER_TOKEN,
    "llama2-70b-a100x2": (2 * 68_976_648_192) // (2 * 80 * 8 * 128 * 2),
    "unit": 0,
}


def _positive(name: str, value: object, *, minimum: float = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    _positive(name, value, minimum=0)


def _count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """How devices combine [G] (docs/planner.md "Cost model"). A *device* is one worker of
    the cost model (1 H100 for llama3-8b-h100; a TP-2 pair of A100s for llama2-70b-a100x2).

    Attributes:
        num_gpus: devices available, N.
        weight_kv_tokens: model weights expressed in KV-cache tokens (memory of one copy).
        allreduce_base_ms: whole-model all-reduce latency of one pass at TP degree 2
            (2 all-reduces per layer, summed over layers); scaled by 2(d-1)/d for degree d.
        allreduce_ms_per_token: whole-model all-reduce cost per token in the pass, same scaling.
        p2p_ms: one pipeline hop (activation send between stages) per micro-batch.
        kv_transfer_ms_per_token: WAA KV hand-over (encode device -> host -> decode device).
        max_tp_degree: the largest TP degree (devices in one node).
        kv_headroom: decode KV is planned at this multiple of the expected occupancy.
    """

    num_gpus: int
    weight_kv_tokens: int = 0
    allreduce_base_ms: float = 0.64
    allreduce_ms_per_token: float = 0.0017
    p2p_ms: float = 0.02
    kv_transfer_ms_per_token: float = 0.0052
    max_tp_degree: int = 8
    kv_headroom: float = 1.2

    def __post_init__(self) -> None:
        _count("num_gpus", self.num_gpus)
        _non_negative("weight_kv_tokens", self.weight_kv_tokens)
        for name in ("allreduce_base_ms", "allreduce_ms_per_token", "p2p_ms"):
            _non_negative(name, getattr(self, name))
        _non_negative("kv_transfer_ms_per_token", self.kv_transfer_ms_per_token)
        _count("max_tp_degree", self.max_tp_degree)
        _positive("kv_headroom", self.kv_headroom)


@dataclass(frozen=True, slots=True)
class Config:
    """One ExeGPT configuration: the knobs of docs/planner.md, "Knob directions".

    Attributes:
        policy: "rra" (all devices alternate encode and decode) or "waa" (separate pipelines).
        encode_batch: B_E, queries encoded per encode phase (RRA) or per encode batch (WAA).
        decode_batch: B_D, target decode-batch size (derived from B_E by XSimulator).
        decode_steps: N_D, decode iterations between encode phases (RRA; 1 for WAA).
        micro_batches: decoder micro-batches in flight (WAA; RRA uses one per stage).
        tp_degree: d, the tensor-parallel degree of the TP groups (1 = no TP).
        tp_gpus: k, devices running TP at degree d (a multiple of d; 0 when d == 1).
        num_gpus: N, all devices used.
        encode_gpus, decode_gpus: WAA's split of N (0 and 0 for RRA). WAA puts the TP groups
            on the encode side first, the rest on the decode side.
        variant: how the WAA split was chosen: "c" compute- or "m" memory-balanced (the paper's
        WAA-C / WAA-M),
            "" when it was searched (the planner tries every split) and always "" for RRA.
    """

    policy: Policy
    encode_batch: int
    decode_batch: int
    decode_steps: int
    micro_batches: int
    tp_degree: int
    tp_gpus: int
    num_gpus: int
    encode_gpus: int = 0
    decode_gpus: int = 0
    variant: str = ""

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        for name in ("encode_batch", "decode_batch", "decode_steps", "micro_batches"):
            _count(name, getattr(self, name))
        _count("tp_degree", self.tp_degree)
        _count("num_gpus", self.num_gpus)
        d, k = self.tp_degree, self.tp_gpus
        if isinstance(k, bool) or not isinstance(k, int) or k < 0 or k % d or k > self.num_gpus:
            raise ValueError(f"tp_gpus must be a multiple of tp_degree {d} in [0, N], got {k!r}")
        if (d == 1) != (k == 0):
            raise ValueError("tp_gpus must be 0 exactly when tp_degree is 1")
        if self.policy == "waa":
            self._check_waa()
        elif self.encode_gpus or self.decode_gpus or self.variant:
            raise ValueError("RRA uses all devices for both phases: no encode/decode split")

    def _check_waa(self) -> None:
        _count("encode_gpus", self.encode_gpus)
        _count("decode_gpus", self.decode_gpus)
        if self.encode_gpus + self.decode_gpus != self.num_gpus:
            raise ValueError("encode_gpus + decode_gpus must equal num_gpus")
        if self.decode_steps != 1:
            raise ValueError("WAA merges encoded batches every decode iteration: decode_steps 1")
        if self.variant not in ("", "c", "m"):
            raise ValueError(f"WAA variant must be '', 'c' or 'm', got {self.variant!r}")
        if self.tp_split()[1] > self.decode_gpus:
            raise ValueError("tp_gpus does not fit on the encode and decode sides")

    def tp_split(self) -> tuple[int, int]:
        """WAA: TP devices on the encode side and on the decode side (encode side first)."""
        d = self.tp_degree
        on_encode = min(self.tp_gpus, (self.encode_gpus // d) * d)
        return on_encode, self.tp_gpus - on_encode

    def label(self) -> str:
        """Short human-readable form, e.g. ``RRA B_E=32 B_D=410 N_D=8 TP=2x4``."""
        tp = f"TP={self.tp_degree}x{self.tp_gpus}" if self.tp_gpus else "TP=1"
        if self.policy == "rra":
            return (
                f"RRA B_E={self.encode_batch} B_D={self.decode_batch} N_D={self.decode_steps} {tp}"
            )
        return (
            f"WAA{'-' * bool(self.variant)}{self.variant.upper()} "
            f"B_E={self.encode_batch} B_D={self.decode_batch} "
            f"mb={self.micro_batches} enc/dec={self.encode_gpus}/{self.decode_gpus} {tp}"
        )


@dataclass(frozen=True, slots=True, eq=False)
class Workload:
    """Input/output length sample (input and output lengths as empirical distributions).

    ``output_tokens`` counts every generated token; the prefill produces the first one, so a
    request with s output tokens needs s - 1 decode iterations.
    """

    prompt_tokens: IntArray
    output_tokens: IntArray
    source: str = ""

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "output_tokens"):
            array = getattr(self, name)
            if not isinstance(array, np.ndarray) or array.ndim != 1 or array.size == 0:
                raise ValueError(f"{name} must be a non-empty 1-D array")
            if array.min() < 1:
                raise ValueError(f"{name} must be >= 1 everywhere")
        if self.prompt_tokens.size != self.output_tokens.size:
            raise ValueError("prompt_tokens and output_tokens must have equal length")

    @classmethod
    def from_trace(cls, trace: Trace, num_samples: int | None, *, seed: int) -> Workload:
        """Sample ``num_samples`` requests without replacement (all of them when None)."""
        n = len(trace)
        if num_samples is not None and num_samples < n:
            rng = np.random.default_rng(seed)
            idx = np.sort(rng.choice(n, size=num_samples, replace=False))
        else:
            idx = np.arange(n)
        prompts = np.asarray(trace.prompt_tokens[idx], dtype=np.int64)
        outputs = np.asarray(trace.output_tokens[idx], dtype=np.int64)
        return cls(prompts, outputs, trace.source)

    def __len__(self) -> int:
        return int(self.prompt_tokens.size)

    @property
    def mean_prompt_tokens(self) -> float:
        return float(self.prompt_tokens.mean())

    @property
    def mean_output_tokens(self) -> float:
        return float(self.output_tokens.mean())

    @property
    def p99_output_tokens(self) -> int:
        """S99: the 99th-percentile output length (the latency target applies to it)."""
        return int(np.ceil(np.quantile(self.output_tokens, 0.99)))


@dataclass(frozen=True, slots=True)
class Prediction:
    """What a configuration achieves: sequences/s, latency of the S99 output, feasibility.

    ``feasible`` is False when the configuration does not fit in memory (then throughput and
    latency are still reported where computable, else inf latency and 0 throughput).
    ``reason`` says why it is infeasible ("" when feasible).
    """

    throughput_rps: float
    latency_s: float
    feasible: bool
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.throughput_rps >= 0 or not self.latency_s >= 0:
            raise ValueError("throughput_rps and latency_s must be >= 0")

    def meets(self, latency_target_s: float) -> bool:
        """Feasible and within the latency target."""
        return self.feasible and self.latency_s <= latency_target_s


@dataclass(frozen=True, slots=True)
class SearchSpace:
    """The knob grid XScheduler searches (docs/planner.md). Values must be sorted ascending.

    The WAA split (encode_gpus) is searched over every value 1..N-1; micro-batches over
    1..min(decode pipeline depth, ``max_micro_batches``); TP devices over multiples of d.
    """

    encode_batches: tuple[int, ...] = (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
    decode_steps: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
    tp_degrees: tuple[int, ...] = (1, 2, 4, 8)
    policies: tuple[Policy, ...] = POLICIES
    max_micro_batches: int = 8

    def __post_init__(self) -> None:
        for name in ("encode_batches", "decode_steps", "tp_degrees"):
            values = getattr(self, name)
            if not values or list(values) != sorted(set(values)):
                raise ValueError(f"{name} must be non-empty, sorted and without repeats")
            for value in values:
                _count(name, value)
        if not self.policies or any(p not in POLICIES for p in self.policies):
            raise ValueError(f"policies must be a non-empty subset of {POLICIES}")
        _count("max_micro_batches", self.max_micro_batches)
