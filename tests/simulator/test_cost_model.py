"""Tests for simulator/cost_model.py: presets, the linear model, profile loading, validation."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest

from simulator import cost_model as cm
from simulator.cost_model import PRESETS, CostModel, load_cost_model

_VALID_FIELDS = {
    "name": "measured",
    "kv_capacity_tokens": 1000,
    "base_ms": 10.0,
    "prefill_ms_per_token": 0.1,
    "decode_ms_per_request": 0.02,
    "kv_ms_per_token": 1e-4,
}


def _toml(fields: dict[str, object]) -> str:
    return "\n".join(f"{key} = {json.dumps(value)}" for key, value in fields.items()) + "\n"


def test_presets_have_expected_names() -> None:
    assert set(PRESETS) == {"unit", "llama2-70b-a100x2", "llama3-8b-h100"}
    for name, model in PRESETS.items():
        assert model.name == name


def test_llama2_70b_preset_matches_documented_numbers() -> None:
    model = PRESETS["llama2-70b-a100x2"]
    assert model.kv_capacity_tokens == 16_492
    assert model.base_ms == 35.0
    assert model.prefill_ms_per_token == 0.45
    assert model.decode_ms_per_request == 0.05
    assert model.kv_ms_per_token == 8e-5
    assert model.unit is False


def test_unit_preset_defaults() -> None:
    model = PRESETS["unit"]
    assert model.unit is True
    assert model.kv_capacity_tokens == 16_492


@pytest.mark.parametrize("load", [(0, 0, 0), (5000, 0, 0), (0, 256, 300_000), (10, 3, 77)])
def test_unit_model_returns_one_regardless_of_load(load: tuple[int, int, int]) -> None:
    assert PRESETS["unit"].iteration_time_s(*load) == 1.0


def test_iteration_time_is_linear_combination_in_seconds() -> None:
    model = CostModel(
        "m",
        100,
        base_ms=2.0,
        prefill_ms_per_token=0.5,
        decode_ms_per_request=0.25,
        kv_ms_per_token=0.001,
    )
    expected_ms = 2.0 + 0.5 * 40 + 0.25 * 8 + 0.001 * 3000
    assert model.iteration_time_s(40, 8, 3000) == pytest.approx(expected_ms / 1000)
    assert model.iteration_time_s(0, 0, 0) == pytest.approx(0.002)


def test_iteration_time_for_70b_decode_batch() -> None:
    model = PRESETS["llama2-70b-a100x2"]
    # 35 + 0.45*100 + 0.05*64 + 8e-5*16000 = 35 + 45 + 3.2 + 1.28 ms
    assert model.iteration_time_s(100, 64, 16_000) == pytest.approx(0.08448)


def test_iteration_time_rejects_negative_load() -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        PRESETS["llama2-70b-a100x2"].iteration_time_s(-1, 0, 0)


def test_llama3_8b_kv_capacity_recomputed_from_constants() -> None:
    kv_bytes_per_token = 2 * cm.LLAMA3_8B_LAYERS * cm.LLAMA3_8B_KV_HEADS * cm.LLAMA3_8B_HEAD_DIM * 2
    assert kv_bytes_per_token == cm.LLAMA3_8B_KV_BYTES_PER_TOKEN == 131_072
    weights = cm.LLAMA3_8B_PARAMS * 2
    free = cm.GPU_MEMORY_UTILIZATION * cm.H100_MEMORY_BYTES - weights - cm.ACTIVATION_RESERVE_BYTES
    expected_m = math.floor(free / kv_bytes_per_token)
    model = PRESETS["llama3-8b-h100"]
    assert model.kv_capacity_tokens == expected_m
    assert 400_000 < expected_m < 460_000  # the figure quoted in docs/cost_models.md


def test_llama3_8b_coefficients_recomputed_from_constants() -> None:
    model = PRESETS["llama3-8b-h100"]
    bandwidth = cm.ACHIEVED_BANDWIDTH_FRACTION * cm.H100_BANDWIDTH_BYTES_PER_S
    flops = cm.ACHIEVED_MFU * cm.H100_BF16_FLOPS_PER_S
    assert model.base_ms == pytest.approx(1e3 * cm.LLAMA3_8B_WEIGHT_BYTES / bandwidth, rel=1e-3)
    assert model.prefill_ms_per_token == pytest.approx(2e3 * cm.LLAMA3_8B_PARAMS / flops, rel=1e-3)
    assert model.kv_ms_per_token == pytest.approx(131_072e3 / bandwidth, rel=1e-3)
    assert model.decode_ms_per_request == cm.LLAMA3_8B_DECODE_MS_PER_REQUEST
    # Values quoted in docs/cost_models.md.
    assert (model.base_ms, model.prefill_ms_per_token) == (5.993, 0.03248)
    assert model.kv_ms_per_token == 4.891e-5


def test_load_preset_by_name_and_override_kv_tokens() -> None:
    assert load_cost_model("llama2-70b-a100x2") == PRESETS["llama2-70b-a100x2"]
    model = load_cost_model("unit", kv_tokens=12)
    assert model.kv_capacity_tokens == 12 and model.unit
    assert PRESETS["unit"].kv_capacity_tokens == 16_492  # the preset itself is untouched


def test_kv_tokens_override_is_validated() -> None:
    with pytest.raises(ValueError, match="kv_capacity_tokens"):
        load_cost_model("unit", kv_tokens=0)


def test_unknown_preset_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown cost model 'h200'") as info:
        load_cost_model("h200")
    for name in PRESETS:
        assert name in str(info.value)


def test_load_toml_profile(tmp_path: Path) -> None:
    path = tmp_path / "profile.toml"
    path.write_text(_toml({**_VALID_FIELDS, "description": "fit on 2025-01-01"}))
    model = load_cost_model(str(path))
    assert model == CostModel(**{**_VALID_FIELDS, "description": "fit on 2025-01-01"})  # type: ignore[arg-type]


def test_load_json_profile_defaults_name_to_stem_and_overrides_kv(tmp_path: Path) -> None:
    fields = {k: v for k, v in _VALID_FIELDS.items() if k != "name"}
    fields["base_ms"] = 10  # an integer is accepted for a float field
    path = tmp_path / "h100_fit.json"
    path.write_text(json.dumps(fields))
    model = load_cost_model(str(path), kv_tokens=500)
    assert model.name == "h100_fit"
    assert model.kv_capacity_tokens == 500
    assert model.base_ms == 10.0 and isinstance(model.base_ms, float)


def test_to_dict_round_trips_through_json_profile(tmp_path: Path) -> None:
    model = PRESETS["llama3-8b-h100"]
    data = model.to_dict()
    assert data["kv_capacity_tokens"] == model.kv_capacity_tokens
    path = tmp_path / "copy.json"
    path.write_text(json.dumps(data))
    assert load_cost_model(str(path)) == model


def test_missing_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(_toml({k: v for k, v in _VALID_FIELDS.items() if k != "kv_ms_per_token"}))
    with pytest.raises(ValueError, match=r"bad\.toml.*missing field\(s\) kv_ms_per_token"):
        load_cost_model(str(path))


@pytest.mark.parametrize(
    ("field", "value", "pattern"),
    [
        ("base_ms", "fast", "field base_ms must be int or float"),
        ("kv_capacity_tokens", 10.5, "field kv_capacity_tokens must be int"),
        ("unit", 1, "field unit must be bool"),
        ("kv_capacity_tokens", True, "field kv_capacity_tokens must be int"),
        ("prefill_ms_per_token", -0.1, "prefill_ms_per_token must be finite and >= 0"),
        ("kv_capacity_tokens", 0, "kv_capacity_tokens must be an integer >= 1"),
        ("typo_ms", 1.0, r"unknown field\(s\) typo_ms"),
    ],
)
def test_bad_field_is_named(tmp_path: Path, field: str, value: object, pattern: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**_VALID_FIELDS, field: value}))
    with pytest.raises(ValueError, match=pattern) as info:
        load_cost_model(str(path))
    assert "bad.json" in str(info.value)


def test_malformed_and_missing_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("base_ms = = 3\n")
    with pytest.raises(ValueError, match=r"broken\.toml.*not valid TOML"):
        load_cost_model(str(broken))
    with pytest.raises(ValueError, match=r"absent\.json.*cannot read"):
        load_cost_model(str(tmp_path / "absent.json"))
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(ValueError, match="top level must be"):
        load_cost_model(str(listed))
    other = tmp_path / "profile.yaml"
    other.write_text("base_ms: 1\n")
    with pytest.raises(ValueError, match=r"profile\.yaml.*\.toml or \.json"):
        load_cost_model(str(other))


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"base_ms": -1.0}, "base_ms must be finite and >= 0"),
        ({"decode_ms_per_request": -0.01}, "decode_ms_per_request"),
        ({"kv_ms_per_token": math.inf}, "kv_ms_per_token must be finite"),
        ({"prefill_ms_per_token": math.nan}, "prefill_ms_per_token must be finite"),
        ({"kv_capacity_tokens": 0}, "kv_capacity_tokens must be an integer >= 1"),
        ({"kv_capacity_tokens": -5}, "kv_capacity_tokens"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_constructor_rejects_bad_values(changes: dict[str, object], pattern: str) -> None:
    base = PRESETS["llama2-70b-a100x2"]
    with pytest.raises(ValueError, match=pattern):
        dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_cost_model_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["unit"].base_ms = 1.0  # type: ignore[misc]
