"""Tests for predictors/survivor.py: remaining-length re-prediction used by the refiner.

The synthetic lengths are log-Student-t per (prompt, model), so a request's remaining length
after g tokens grows with g (heavy tail: the longer it has run, the longer it will still run),
which a prompt-only interval plus a fixed ratio cannot follow.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from algorithms.protocols import AdmissionRefiner
from predictors.default import DEFAULT_MODEL_PATH
from predictors.evaluate import evaluate
from predictors.model import LengthModel, ModelFileError, fit
from predictors.model_file import read_model_file, write_model_file
from tests.predictors.synthetic_lengths import (
    HELD_OUT_CAP,
    dev_samples,
    fitted_model,
    held_out_samples,
)


@functools.cache
def survivor_model() -> LengthModel:
    return fit(dev_samples(), seed=0, survivor=True)


@functools.cache
def reports() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """(ladder, survivor) survivor reports of the same base model on the held-out rows."""
    model = survivor_model()
    ladder = dataclasses.replace(model, survivor=None)
    out = []
    for m in (ladder, model):
        rep = evaluate(m, held_out_samples(), max_tokens=HELD_OUT_CAP)
        out.append([r for r in rep["survivors"] if r["n"] >= 500])
    return out[0], out[1]


def test_survivor_coverage_stays_near_target_and_ranks_better() -> None:
    model = survivor_model()
    assert model.survivor is not None
    assert model.survivor.checkpoints == model.ladder.checkpoints[: len(model.survivor.checkpoints)]
    ladder, survivor = reports()
    assert len(survivor) >= 4 and [r["k"] for r in ladder] == [r["k"] for r in survivor]
    target = 1.0 - model.d_lo - model.d_hi
    gains = []
    for old, new in zip(ladder, survivor, strict=True):
        assert isinstance(new["coverage"], float) and isinstance(old["coverage"], float)
        # near target (split conformal per checkpoint), and never further off than the ladder
        assert abs(new["coverage"] - target) <= max(0.03, abs(old["coverage"] - target)), new
        assert isinstance(new["miss_below_lo"], float) and new["miss_below_lo"] <= 0.08, new
        tau_old, tau_new = old["kendall_tau_lo"], new["kendall_tau_lo"]
        assert isinstance(tau_new, float)
        gains.append(tau_new - (tau_old if isinstance(tau_old, float) else 0.0))
    assert min(gains) > -0.02 and float(np.mean(gains)) > 0.05, gains


def test_refine_admitted_is_a_function_of_the_admitted_interval() -> None:
    model = survivor_model()
    assert isinstance(model, AdmissionRefiner)
    samples = held_out_samples().take(np.arange(2000))
    caps = np.full(len(samples), HELD_OUT_CAP, dtype=np.int64)
    lo, hi = model.predict(samples.batch(caps))
    for g in (1, 7, 8, 13, 64, 100, 700, 5000):
        gen = np.full(len(lo), g, dtype=np.int64)
        a_lo, a_hi = model.refine_admitted(lo, hi, lo, hi, gen, caps)
        # calling it again on its own output (as the loop does every iteration) changes nothing
        b_lo, b_hi = model.refine_admitted(lo, hi, a_lo, a_hi, gen, caps)
        assert np.array_equal(a_lo, b_lo) and np.array_equal(a_hi, b_hi)
        assert np.all(a_lo >= np.minimum(g + 1, caps)) and np.all(a_lo <= a_hi)
        assert np.all(a_hi <= caps)
        if g < model.ladder.checkpoints[0]:  # before the first checkpoint: the ladder's rule
            assert np.array_equal(a_hi, hi) and np.array_equal(a_lo, np.maximum(lo, g + 1))


def test_fit_and_file_are_deterministic_and_round_trip(tmp_path: Path) -> None:
    first, second = tmp_path / "a.kvp", tmp_path / "b.kvp"
    survivor_model().save(first)
    fit(dev_samples(), seed=0, survivor=True).save(second)
    assert first.read_bytes() == second.read_bytes()
    loaded = LengthModel.load(first)
    assert loaded.survivor is not None
    samples = held_out_samples().take(np.arange(500))
    caps = np.full(len(samples), HELD_OUT_CAP, dtype=np.int64)
    lo, hi = loaded.predict(samples.batch(caps))
    gen = np.full(len(lo), 40, dtype=np.int64)
    got = loaded.refine_admitted(lo, hi, lo, hi, gen, caps)
    want = survivor_model().refine_admitted(lo, hi, lo, hi, gen, caps)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


@pytest.mark.parametrize("path", ["fitted", "shipped"])
def test_files_without_a_survivor_model_keep_the_ladder(path: str, tmp_path: Path) -> None:
    if path == "fitted":
        target = tmp_path / "old.kvp"
        fitted_model("quantile").save(target)
    else:
        target = DEFAULT_MODEL_PATH
    with zipfile.ZipFile(target) as archive:
        if "survivor_lo.txt" in archive.namelist():
            pytest.skip("the shipped model has a survivor model")
    model = LengthModel.load(target)
    assert model.survivor is None
    samples = held_out_samples().take(np.arange(500))
    caps = np.full(len(samples), HELD_OUT_CAP, dtype=np.int64)
    lo, hi = model.predict(samples.batch(caps))
    for g in (3, 40, 900):
        gen = np.full(len(lo), g, dtype=np.int64)
        cur_lo, cur_hi = np.maximum(lo, 2), hi + 5  # a current interval unlike the admitted one
        got = model.refine_admitted(lo, hi, cur_lo, cur_hi, gen, caps)
        want = model.refine(cur_lo, cur_hi, gen, caps)
        assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_corrupt_survivor_header_is_a_model_file_error(tmp_path: Path) -> None:
    good = tmp_path / "good.kvp"
    survivor_model().save(good)
    header, members = read_model_file(good)
    header = {k: v for k, v in header.items() if k not in ("format", "format_version", "members")}
    header["survivor"] = {**header["survivor"], "version": 99}
    bad = tmp_path / "bad.kvp"
    write_model_file(bad, json.loads(json.dumps(header)), members)
    with pytest.raises(ModelFileError, match="survivor model version"):
        LengthModel.load(bad)
