"""XProfiler fitting (simulator.profiler): known coefficients come back; bad input is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from simulator.cost_model import CostModel, load_cost_model
from simulator.profiler import (
    ProfileGrid,
    ProfileSample,
    fit_cost_model,
    predict_ms,
    read_samples,
    render_profile,
)

TRUE = CostModel("truth", 10_000, 5.0, 0.03, 0.02, 4e-5)


def synthetic_samples(noise: float, seed: int = 0) -> list[ProfileSample]:
    """A grid's worth of iterations timed by TRUE, times (1 + noise * N(0, 1))."""
    rng = np.random.default_rng(seed)
    samples = []
    for batch_size in (1, 4, 16, 64):
        for seq_tokens in (128, 512, 2048):
            loads = [("prefill", seq_tokens, batch_size * seq_tokens, 0)]
            loads += [("decode", seq_tokens + k, 0, batch_size) for k in range(1, 4)]
            for phase, context, prefill_tokens, num_decode in loads:
                kv_tokens = batch_size * (context + 1)
                ms = 1000 * TRUE.iteration_time_s(prefill_tokens, num_decode, kv_tokens)
                ms *= 1 + noise * rng.standard_normal()
                samples.append(
                    ProfileSample(
                        phase, 1, batch_size, context, prefill_tokens, num_decode, kv_tokens, ms
                    )
                )
    return samples


def test_exact_timings_recover_the_coefficients() -> None:
    fit = fit_cost_model(synthetic_samples(0.0), name="fit", kv_capacity_tokens=123)
    model = fit.cost_model
    assert model.base_ms == pytest.approx(5.0, rel=1e-6)
    assert model.prefill_ms_per_token == pytest.approx(0.03, rel=1e-6)
    assert model.decode_ms_per_request == pytest.approx(0.02, rel=1e-6)
    assert model.kv_ms_per_token == pytest.approx(4e-5, rel=1e-6)
    assert model.kv_capacity_tokens == 123 and model.name == "fit"
    assert fit.r_squared == pytest.approx(1.0) and fit.max_relative_error < 1e-6
    assert fit.num_samples == 48


def test_noisy_timings_recover_the_coefficients_roughly() -> None:
    fit = fit_cost_model(synthetic_samples(0.02, seed=3), name="fit", kv_capacity_tokens=1)
    model = fit.cost_model
    assert model.base_ms == pytest.approx(5.0, rel=0.05)
    assert model.prefill_ms_per_token == pytest.approx(0.03, rel=0.05)
    assert model.kv_ms_per_token == pytest.approx(4e-5, rel=0.3)
    assert 0.99 < fit.r_squared < 1.0
    assert 0.02 < fit.max_relative_error < 0.15


def test_coefficients_stay_non_negative() -> None:
    # times that fall with the KV load: plain least squares would give c_kv < 0
    samples = [
        ProfileSample("decode", 1, b, 100, 0, b, kv, ms)
        for b, kv, ms in [(1, 100, 6.0), (1, 1000, 5.0), (2, 200, 6.1), (2, 2000, 5.2)]
    ]
    model = fit_cost_model(samples, name="x", kv_capacity_tokens=1).cost_model
    assert model.kv_ms_per_token == 0.0
    assert min(model.base_ms, model.decode_ms_per_request, model.prefill_ms_per_token) >= 0


def test_profile_file_loads_as_a_cost_model_and_keeps_its_samples(tmp_path: Path) -> None:
    samples = synthetic_samples(0.01)
    fit = fit_cost_model(samples, name="lab", kv_capacity_tokens=777, description='a "quoted"\n')
    path = tmp_path / "lab.toml"
    path.write_text(render_profile(fit, samples, header="engine test\nsecond line"))
    loaded = load_cost_model(str(path))
    assert loaded == fit.cost_model
    assert read_samples(path) == samples
    text = path.read_text()
    assert "# engine test\n# second line\n" in text and "R^2 (of ms) = " in text
    fitted = predict_ms(loaded, samples)
    assert text.count("# sample = ") == len(samples) and f"{fitted[0]:.6f}"[:6] in text


def test_read_samples_names_the_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text('base_ms = 1.0\n# sample = ["decode", 1, 2]\n')
    with pytest.raises(ValueError, match=r"p.toml, line 2: bad sample"):
        read_samples(path)
    path.write_text('# sample = ["warp", 1, 1, 1, 0, 1, 2, 3.0, 3.0]\n')
    with pytest.raises(ValueError, match="line 1: bad sample.*phase"):
        read_samples(path)


def test_too_few_samples_is_an_error() -> None:
    with pytest.raises(ValueError, match="at least 4 samples"):
        fit_cost_model(synthetic_samples(0.0)[:3], name="x", kv_capacity_tokens=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"phase": "encode"}, "phase must be one of"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"kv_tokens": -1}, "kv_tokens must be an integer >= 0"),
        ({"measured_ms": 0.0}, "measured_ms must be > 0"),
        ({"measured_ms": float("nan")}, "measured_ms must be a finite number"),
        ({"tp": True}, "tp must be an integer"),
    ],
)
def test_bad_samples_are_refused(change: dict[str, object], message: str) -> None:
    good = ProfileSample("decode", 1, 2, 10, 0, 2, 22, 1.0)
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(good, **change)  # type: ignore[arg-type]


def test_grid_parses_and_refuses_bad_text() -> None:
    grid = ProfileGrid.parse("1,2x16,32,64", decode_steps=2, repeats=1)
    assert grid.cells() == [(1, 16), (1, 32), (1, 64), (2, 16), (2, 32), (2, 64)]
    assert grid.decode_steps == 2 and grid.repeats == 1 and grid.warmup == 1
    for text in ("1,2", "1,ax16", "x16", "1x"):
        with pytest.raises(ValueError, match="expected BATCH_SIZES x SEQ_LENGTHS"):
            ProfileGrid.parse(text)
    with pytest.raises(ValueError, match="batch_sizes must be an integer >= 1"):
        ProfileGrid.parse("0,2x16")
    with pytest.raises(ValueError, match="decode_steps must be an integer >= 1"):
        ProfileGrid.parse("1x16", decode_steps=0)
