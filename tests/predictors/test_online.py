"""Online recalibration (predictors/online.py, predictors/online_eval.py): convergence on shifted
streams, the censoring rule, bounded state, determinism and persistence."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from predictors.base import IntArray, LengthSamples, PromptBatch
from predictors.evaluate import evaluate
from predictors.online import (
    UNCAPPED,
    OnlineCalibrator,
    OnlinePredictor,
    judge,
    replay,
)
from predictors.online_eval import evaluate_online
from tests.predictors.synthetic_lengths import HELD_OUT_CAP, fitted_model, held_out_samples

BAND = (0.85, 0.95)  # two-sided coverage the target 0.90 must land in
SIDE_BAND = (0.025, 0.075)  # each side's miss rate (budget 0.05), the same band split evenly


def _scaled(samples: LengthSamples, factor: float, rows: int) -> LengthSamples:
    """The first `rows` rows in a fixed shuffled order, true lengths multiplied by `factor`."""
    order = np.random.default_rng(7).permutation(len(samples))[:rows].astype(np.int64)
    part = samples.take(order)
    y = np.maximum(1, np.round(part.output_tokens * factor)).astype(np.int64)
    return dataclasses.replace(part, output_tokens=y)


def _check_band(y: IntArray, lo: IntArray, hi: IntArray) -> None:
    below, above = float(np.mean(y < lo)), float(np.mean(y > hi))
    assert BAND[0] <= 1.0 - below - above <= BAND[1], (below, above)
    assert SIDE_BAND[0] <= below <= SIDE_BAND[1], below
    assert SIDE_BAND[0] <= above <= SIDE_BAND[1], above


@pytest.mark.parametrize("factor", [3.0, 1.0 / 3.0])
def test_online_recovers_coverage_per_side_on_a_shifted_stream(factor: float) -> None:
    model = fitted_model()
    stream = _scaled(held_out_samples(), factor, 2400)
    offline = evaluate(model, stream, max_tokens=HELD_OUT_CAP)
    assert offline["coverage"] < 0.6  # the shift breaks split conformal badly
    report = evaluate_online(model, stream, max_tokens=HELD_OUT_CAP)
    after = report["after_warmup"]
    assert after["warmup"] == 200
    assert BAND[0] <= after["coverage"] <= BAND[1]
    assert SIDE_BAND[0] <= after["miss_below_lo"] <= SIDE_BAND[1]
    assert SIDE_BAND[0] <= after["miss_above_hi"] <= SIDE_BAND[1]
    # and it stays there: every later stretch of 400 completions is in the band too
    online = OnlinePredictor(model, OnlineCalibrator(model.d_lo, model.d_hi))
    caps = np.full(len(stream), HELD_OUT_CAP, dtype=np.int64)
    base = online.base_intervals(stream.batch(caps))
    lo, hi = replay(online.calibrator, *base, stream.output_tokens, caps)
    y = np.minimum(stream.output_tokens, caps)
    for start in range(400, len(y), 400):
        part = slice(start, start + 400)
        _check_band(y[part], lo[part], hi[part])
    assert report["coverage"] == pytest.approx(float(np.mean((lo <= y) & (y <= hi))))


def test_online_follows_a_stream_that_shifts_twice() -> None:
    """1x, then 3x, then 1/4x: each regime, past its first 300 completions, is in the band."""
    model = fitted_model()
    parts = [_scaled(held_out_samples(), f, 1200) for f in (1.0, 3.0, 0.25)]
    y = np.concatenate([p.output_tokens for p in parts])
    caps = np.full(len(y), HELD_OUT_CAP, dtype=np.int64)
    online = OnlinePredictor(model, OnlineCalibrator(model.d_lo, model.d_hi))
    base = [online.base_intervals(p.batch(caps[: len(p)])) for p in parts]
    base_lo = np.concatenate([b[0] for b in base])
    base_hi = np.concatenate([b[1] for b in base])
    lo, hi = replay(online.calibrator, base_lo, base_hi, y, caps)
    y = np.minimum(y, caps)
    for k in range(3):
        part = slice(1200 * k + 300, 1200 * (k + 1))
        _check_band(y[part], lo[part], hi[part])
    # without recalibration the last two regimes are far off
    fixed_cov = (base_lo <= y) & (y <= np.minimum(base_hi, caps))
    assert np.mean(fixed_cov[1500:2400]) < 0.6 and np.mean(fixed_cov[2700:]) < 0.6


def test_a_calibrator_that_stops_learning_drifts_and_the_band_check_catches_it() -> None:
    model = fitted_model()
    stream = _scaled(held_out_samples(), 3.0, 1200)
    frozen = OnlineCalibrator(model.d_lo, model.d_hi, step=1e-9)  # as good as no update
    report = evaluate_online(model, stream, max_tokens=HELD_OUT_CAP, calibrator=frozen)
    assert not BAND[0] <= report["after_warmup"]["coverage"] <= BAND[1]


def test_zero_adjustment_gives_back_the_model_interval_and_the_model_sees_no_cap() -> None:
    seen: list[PromptBatch] = []

    class Fixed:
        def predict(self, batch: PromptBatch) -> tuple[IntArray, IntArray]:
            seen.append(batch)
            n = len(batch)
            hi = np.minimum(np.full(n, 900, dtype=np.int64), batch.max_tokens)
            return np.minimum(np.full(n, 37, dtype=np.int64), hi), hi

        def refine(self, lo: IntArray, hi: IntArray, g: IntArray, m: IntArray):  # type: ignore[no-untyped-def]
            return lo + 1, hi

    online = OnlinePredictor(Fixed(), OnlineCalibrator(0.05, 0.05))
    batch = PromptBatch(("a", "b"), np.array([3, 4]), ("m", "m"), np.array([1000, 500]))
    lo, hi = online.predict(batch)
    assert lo.tolist() == [37, 37] and hi.tolist() == [900, 500]
    assert seen[0].max_tokens.tolist() == [UNCAPPED, UNCAPPED]
    assert online.refine(lo, hi, np.array([1, 1]), np.array([1000, 500]))[0].tolist() == [38, 38]
    online.calibrator.lo.delta, online.calibrator.hi.delta = 0.5, -0.5
    lo, hi = online.predict(batch)
    # lo = ceil(e^-0.5 * 38 - 1) = 23, hi = floor(e^-0.5 * 901 - 1) = 545
    assert lo.tolist() == [23, 23] and hi.tolist() == [545, 500]


@pytest.mark.parametrize(
    ("lo", "hi", "tokens", "censored", "expected"),
    [
        (10, 50, 5, False, ("miss", "covered")),
        (10, 50, 60, False, ("covered", "miss")),
        (10, 50, 50, False, ("covered", "covered")),
        # finish reason `length` at max_tokens = 50: never below lo; hi = cap: covered
        (10, 50, 50, True, ("covered", "covered")),
        # length at max_tokens = 80 with hi 50 < cap: proven miss above hi
        (10, 50, 80, True, ("covered", "miss")),
        # cut by another limit below lo / below hi: those sides say nothing
        (10, 50, 5, True, ("unknown", "unknown")),
        (10, 50, 30, True, ("covered", "unknown")),
    ],
)
def test_censoring_rule(
    lo: int, hi: int, tokens: int, censored: bool, expected: tuple[str, str]
) -> None:
    seen = judge(lo, hi, tokens, censored=censored)
    assert (seen.below_lo, seen.above_hi) == expected


def test_censored_requests_never_count_as_below_lo_misses() -> None:
    """Every request hits max_tokens = 64: the true lengths are unknown above 64. Intervals
    wholly below the cap are proven misses above hi; no below-lo miss is ever recorded."""
    cal = OnlineCalibrator(0.05, 0.05)
    for _ in range(300):
        lo, hi = cal.apply(np.array([200]), np.array([400]), np.array([64]))
        cal.observe(int(lo[0]), int(hi[0]), 64, censored=True)
    assert cal.lo.misses == 0 and cal.lo.unknown == 0
    assert cal.censored == 300
    # lo = hi = 64 (capped) is covered on both sides: delta_lo only ever decreases
    assert cal.deltas[0] < 0.0
    cal2 = OnlineCalibrator(0.05, 0.05)
    for _ in range(50):
        lo, hi = cal2.apply(np.array([5]), np.array([20]), np.array([64]))
        cal2.observe(int(lo[0]), int(hi[0]), 64, censored=True)
    assert cal2.hi.misses > 0 and cal2.deltas[1] > 0.0  # hi < cap reached: widened
    assert cal2.lo.misses == 0


def test_state_is_bounded_and_updates_are_deterministic() -> None:
    rng = np.random.default_rng(3)
    y = rng.lognormal(5.0, 1.0, size=20_000).astype(np.int64) + 1
    base_lo, base_hi = np.full(len(y), 20, dtype=np.int64), np.full(len(y), 400, dtype=np.int64)
    caps = np.full(len(y), 4096, dtype=np.int64)
    states = []
    for _ in range(2):
        cal = OnlineCalibrator(0.05, 0.05, window=128)
        replay(cal, base_lo, base_hi, y, caps)
        assert len(cal.lo.recent) == len(cal.hi.recent) == 128
        assert abs(cal.deltas[0]) <= cal.bound and abs(cal.deltas[1]) <= cal.bound
        states.append(json.dumps(cal.to_json()))
    assert states[0] == states[1]
    assert len(states[0]) < 2_000  # O(window), not O(requests)


def test_deltas_stay_within_the_bound_on_a_hopeless_stream() -> None:
    cal = OnlineCalibrator(0.05, 0.05, bound=2.0)
    for _ in range(500):  # every length far above any hi the bound allows
        lo, hi = cal.apply(np.array([1]), np.array([2]), np.array([10**6]))
        cal.observe(int(lo[0]), int(hi[0]), 10**5, censored=False)
    assert cal.deltas[1] == 2.0


def test_persistence_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state" / "calibrator.json"
    cal = OnlineCalibrator(0.05, 0.1, fingerprint="model-a")
    assert not cal.load(path)  # no file yet: a fresh start
    rng = np.random.default_rng(0)
    y = rng.integers(1, 3000, size=700)
    n = len(y)
    replay(cal, np.full(n, 30), np.full(n, 300), y, np.full(n, 2048))
    cal.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["calibrator.json"]  # no temp left
    again = OnlineCalibrator(0.05, 0.1, fingerprint="model-a")
    assert again.load(path)
    assert again.to_json() == cal.to_json()
    probe = (np.array([30, 7]), np.array([300, 90]), np.array([2048, 2048]))
    assert [a.tolist() for a in again.apply(*probe)] == [a.tolist() for a in cal.apply(*probe)]
    with pytest.raises(ValueError, match="another model"):
        OnlineCalibrator(0.05, 0.1, fingerprint="model-b").load(path)
    with pytest.raises(ValueError, match="budgets"):
        OnlineCalibrator(0.05, 0.05, fingerprint="model-a").load(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="calibrator.json"):
        again.load(path)
    path.write_text(json.dumps({**cal.to_json(), "lo": {"delta": 99.0}}))
    with pytest.raises(ValueError, match="calibrator.json"):
        again.load(path)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="budgets"):
        OnlineCalibrator(0.0, 0.05)
    with pytest.raises(ValueError, match="step"):
        OnlineCalibrator(0.05, 0.05, step=0.0)
    with pytest.raises(ValueError, match="bad observation"):
        judge(5, 4, 3, censored=False)
