"""Per-iteration time model for the simulator (docs/cost_models.md; ours, not the papers').

T_iter(ms) = c0 + c_p * prefill_tokens + c_d * num_decode + c_kv * kv_tokens, or exactly one
time unit per iteration when ``unit`` is set (the papers' theory). Invariant: every coefficient is
finite and >= 0 and ``kv_capacity_tokens`` (M) >= 1. The numbers are estimates; docs/cost_models.md
shows the arithmetic, and a measured profile (.toml/.json) can replace them via load_cost_model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

_COEFFICIENT_FIELDS: Final = (
    "base_ms",
    "prefill_ms_per_token",
    "decode_ms_per_request",
    "kv_ms_per_token",
)


@dataclass(frozen=True, slots=True)
class CostModel:
    """Linear iteration-time model; symbols follow docs/cost_models.md.

    Attributes:
        name: preset name or profile label.
        kv_capacity_tokens: KV-cache capacity M in tokens.
        base_ms: c0, fixed cost of one iteration (weight streaming).
        prefill_ms_per_token: c_p, cost per prompt token prefilled in the iteration.
        decode_ms_per_request: c_d, cost per request decoding one token in the iteration.
        kv_ms_per_token: c_kv, cost per KV token held by running requests (attention reads).
        unit: if True every iteration lasts exactly 1.0 (the papers' unit-slot theory).
        description: free text, e.g. where the numbers come from.
    """

    name: str
    kv_capacity_tokens: int
    base_ms: float
    prefill_ms_per_token: float
    decode_ms_per_request: float
    kv_ms_per_token: float
    unit: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("name must be a non-empty string")
        m = self.kv_capacity_tokens
        if isinstance(m, bool) or not isinstance(m, int) or m < 1:
            raise ValueError(f"kv_capacity_tokens must be an integer >= 1, got {m!r}")
        for field in _COEFFICIENT_FIELDS:
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{field} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{field} must be finite and >= 0, got {value!r}")
        if not isinstance(self.unit, bool):
            raise ValueError(f"unit must be a bool, got {self.unit!r}")
        if not isinstance(self.description, str):
            raise ValueError(f"description must be a string, got {self.description!r}")

    def iteration_time_s(self, prefill_tokens: float, num_decode: float, kv_tokens: float) -> float:
        """Duration in seconds of one iteration with the given load (1.0 when ``unit``); the
        planner passes mean (fractional) loads."""
        if prefill_tokens < 0 or num_decode < 0 or kv_tokens < 0:
            raise ValueError(
                "iteration load must be >= 0, got "
                f"prefill_tokens={prefill_tokens}, num_decode={num_decode}, kv_tokens={kv_tokens}"
            )
        if self.unit:
            return 1.0
        total_ms = (
            self.base_ms
            + self.prefill_ms_per_token * prefill_tokens
            + self.decode_ms_per_request * num_decode
            + self.kv_ms_per_token * kv_tokens
        )
        return total_ms / 1000.0

    def to_dict(self) -> dict[str, Any]:
        """Plain dict with the field names, suitable for JSON output and for reloading."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


# --- llama3-8b-h100: estimates from public figures (docs/cost_models.md shows the arithmetic) ---
LLAMA3_8B_PARAMS: Final = 8_030_261_248  # exact count from the HF config (untied lm_head)
LLAMA3_8B_LAYERS: Final = 32
LLAMA3_8B_KV_HEADS: Final = 8
LLAMA3_8B_HEAD_DIM: Final = 128
BF16_BYTES: Final = 2
LLAMA3_8B_KV_BYTES_PER_TOKEN: Final = (
    2 * LLAMA3_8B_LAYERS * LLAMA3_8B_KV_HEADS * LLAMA3_8B_HEAD_DIM * BF16_BYTES
)  # K and V: 131,072 bytes
LLAMA3_8B_WEIGHT_BYTES: Final = LLAMA3_8B_PARAMS * BF16_BYTES
H100_MEMORY_BYTES: Final = 79.19 * 2**30  # what torch reports for an H100 SXM 80 GB (estimate)
H100_BANDWIDTH_BYTES_PER_S: Final = 3.35e12  # HBM3, datasheet
H100_BF16_FLOPS_PER_S: Final = 989e12  # dense BF16, datasheet
GPU_MEMORY_UTILIZATION: Final = 0.9  # vLLM default
ACTIVATION_RESERVE_BYTES: Final = 4 * 2**30  # activations, CUDA graphs, workspaces (estimate)
ACHIEVED_BANDWIDTH_FRACTION: Final = 0.8  # estimate
ACHIEVED_MFU: Final = 0.5  # estimate, large-batch prefill
LLAMA3_8B_DECODE_MS_PER_REQUEST: Final = 0.01  # per-request bookkeeping/sampling (estimate)


def _round_sig(value: float, digits: int = 4) -> float:
    return float(f"{value:.{digits}g}")


def llama3_8b_h100_kv_capacity_tokens() -> int:
    """M = (0.9 * memory - weights - reserve) // KV bytes per token."""
    kv_bytes = (
        GPU_MEMORY_UTILIZATION * H100_MEMORY_BYTES
        - LLAMA3_8B_WEIGHT_BYTES
        - ACTIVATION_RESERVE_BYTES
    )
    return int(kv_bytes // LLAMA3_8B_KV_BYTES_PER_TOKEN)


def _llama3_8b_h100() -> CostModel:
    bandwidth = ACHIEVED_BANDWIDTH_FRACTION * H100_BANDWIDTH_BYTES_PER_S
    flops = ACHIEVED_MFU * H100_BF16_FLOPS_PER_S
    return CostModel(
        name="llama3-8b-h100",
        kv_capacity_tokens=llama3_8b_h100_kv_capacity_tokens(),
        base_ms=_round_sig(1e3 * LLAMA3_8B_WEIGHT_BYTES / bandwidth),
        prefill_ms_per_token=_round_sig(1e3 * 2 * LLAMA3_8B_PARAMS / flops),
        decode_ms_per_request=LLAMA3_8B_DECODE_MS_PER_REQUEST,
        kv_ms_per_token=_round_sig(1e3 * LLAMA3_8B_KV_BYTES_PER_TOKEN / bandwidth),
        description="Estimate from public figures (docs/cost_models.md); not measured.",
    )


PAPER_KV_CAPACITY_TOKENS: Final = 16_492  # M of the papers' Llama2-70B / 2xA100 setting

PRESETS: Final[dict[str, CostModel]] = {
    "unit": CostModel(
        name="unit",
        kv_capacity_tokens=PAPER_KV_CAPACITY_TOKENS,
        base_ms=0.0,
        prefill_ms_per_token=0.0,
        decode_ms_per_request=0.0,
        kv_ms_per_token=0.0,
        unit=True,
        description="One time unit per iteration (the papers' theory); override M as needed.",
    ),
    "llama2-70b-a100x2": CostModel(
        name="llama2-70b-a100x2",
        kv_capacity_tokens=PAPER_KV_CAPACITY_TOKENS,
        base_ms=35.0,
        prefill_ms_per_token=0.45,
        decode_ms_per_request=0.05,
        kv_ms_per_token=8e-5,
        description="Roofline fallback (ours, not the papers'): Llama2-70B, TP=2, A100.",
    ),
    "llama3-8b-h100": _llama3_8b_h100(),
}

_FIELD_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "name": (str,),
    "kv_capacity_tokens": (int,),
    "base_ms": (int, float),
    "prefill_ms_per_token": (int, float),
    "decode_ms_per_request": (int, float),
    "kv_ms_per_token": (int, float),
    "unit": (bool,),
    "description": (str,),
}
_REQUIRED_FIELDS: Final = ("kv_capacity_tokens", *_COEFFICIENT_FIELDS)


def load_cost_model(name_or_path: str, *, kv_tokens: int | None = None) -> CostModel:
    """Return a preset by name, or a model read from a .toml/.json profile.

    A profile holds the ``CostModel`` field names; ``name`` defaults to the file stem, ``unit`` to
    False and ``description`` to "". ``kv_tokens`` (if given) overrides M. Raises ValueError for an
    unknown preset (listing the valid names) or a bad file (naming the file and the field).
    """
    if name_or_path in PRESETS:
        model = PRESETS[name_or_path]
    else:
        path = Path(name_or_path)
        if path.suffix.lower() not in (".toml", ".json") and not path.exists():
            valid = ", ".join(sorted(PRESETS))
            raise ValueError(
                f"unknown cost model {name_or_path!r}: valid presets are {valid}, "
                "or give a path to a .toml or .json profile"
            )
        model = _load_profile(path)
    if kv_tokens is not None:
        model = dataclasses.replace(model, kv_capacity_tokens=kv_tokens)
    return model


def _read_table(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ValueError(f"cost model file {path}: expected a .toml or .json file")
    try:
        text = path.read_text(encoding="utf-8")
        data: object = tomllib.loads(text) if suffix == ".toml" else json.loads(text)
    except OSError as exc:
        raise ValueError(f"cost model file {path}: cannot read it ({exc})") from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cost model file {path}: not valid {suffix[1:].upper()} ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"cost model file {path}: top level must be a table/object")
    return data


def _load_profile(path: Path) -> CostModel:
    data = _read_table(path)
    unknown = sorted(set(data) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(f"cost model file {path}: unknown field(s) {', '.join(unknown)}")
    missing = [field for field in _REQUIRED_FIELDS if field not in data]
    if missing:
        raise ValueError(f"cost model file {path}: missing field(s) {', '.join(missing)}")
    for field, value in data.items():
        allowed = _FIELD_TYPES[field]
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            names = " or ".join(t.__name__ for t in allowed)
            raise ValueError(
                f"cost model file {path}: field {field} must be {names}, got {value!r}"
            )
    kwargs = {"name": path.stem, **data}
    for field in _COEFFICIENT_FIELDS:
        kwargs[field] = float(kwargs[field])
    try:
        return CostModel(**kwargs)
    except ValueError as exc:
        raise ValueError(f"cost model file {path}: {exc}") from exc
