"""Target models absent from training: family fallback, one log line, wider calibrated intervals."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pytest

from predictors.base import LengthSamples, PromptBatch
from predictors.datasets import load_samples
from predictors.evaluate import evaluate
from predictors.families import model_family
from predictors.features import FeatureSpec
from predictors.model import LengthModel, fit
from predictors.splits import split_by_prompt
from tests.predictors.synthetic_lengths import HELD_OUT_CAP, dev_samples, held_out_samples

CORPUS = Path(__file__).resolve().parents[2] / "data/text/lengths.jsonl.gz"


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("llama-3-70b", "llama"),
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", "llama"),
        ("Mixtral-8x7B-Instruct-v0.1", "mistral"),
        ("gpt4_1106_preview", "openai"),
        ("text_davinci_003", "openai"),
        ("Qwen1.5-72B-Chat", "qwen"),
        ("claude-3-opus-20240229", "claude"),
        ("", ""),
        ("1234", ""),
    ],
)
def test_model_family_reads_the_lineage_from_the_name(name: str, family: str) -> None:
    assert model_family(name) == family


@functools.cache
def _synthetic_model() -> LengthModel:
    return fit(dev_samples(), seed=0, unseen_folds=2)


def _with_model(samples: LengthSamples, model: str) -> PromptBatch:
    n = len(samples)
    caps = np.full(n, HELD_OUT_CAP, dtype=np.int64)
    return PromptBatch(samples.prompts, samples.prompt_tokens, (model,) * n, caps)


def test_unseen_model_is_logged_once_and_gets_wider_intervals(
    caplog: pytest.LogCaptureFixture,
) -> None:
    model = _synthetic_model()
    seen = model.spec.models[0]
    test = held_out_samples().take(np.arange(400))
    with caplog.at_level(logging.WARNING, logger="kvsched.predictor"):
        lo_s, hi_s = model.predict(_with_model(test, seen))
        assert not caplog.records  # a seen model is not reported
        lo_u, hi_u = model.predict(_with_model(test, "brand-new-model-7b"))
        model.predict(_with_model(test, "brand-new-model-7b"))
        model.predict(_with_model(test.take(np.arange(3)), "brand-new-model-7b"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "'brand-new-model-7b'" in lines[0] and "not in training" in lines[0]
    assert model.spec.tiers(["brand-new-model-7b", seen]).tolist() == [2, 0]
    width_seen = np.mean(np.log(hi_s / lo_s))
    width_unseen = np.mean(np.log(hi_u / lo_u))
    assert width_unseen >= width_seen
    assert model.unseen is not None and model.unseen.method == "cross-fit"
    assert model.unseen.agnostic_lo >= model.offsets.lo
    assert model.unseen.agnostic_hi >= model.offsets.hi


def test_unseen_offsets_survive_save_and_load(tmp_path: Path) -> None:
    model = _synthetic_model()
    path = tmp_path / "m.kvp"
    model.save(path)
    loaded = LengthModel.load(path)
    assert loaded.unseen == model.unseen and loaded.spec == model.spec
    batch = _with_model(held_out_samples().take(np.arange(50)), "another-unseen")
    for a, b in zip(model.predict(batch), loaded.predict(batch), strict=True):
        np.testing.assert_array_equal(a, b)


def test_version_1_features_without_family_or_lexicon() -> None:
    """unseen_aware=False and lexicon=False give the earlier columns (old files still load)."""
    model = fit(dev_samples(), seed=0, unseen_aware=False, lexicon=False)
    assert model.spec.version == 1 and model.unseen is None
    assert model.spec == FeatureSpec.for_models(dev_samples().models)
    lo, hi = model.predict(_with_model(held_out_samples().take(np.arange(20)), "unknown-x"))
    assert np.all((1 <= lo) & (lo <= hi))


@functools.cache
def _corpus_subset() -> LengthSamples:
    """400 of the corpus's AlpacaEval prompts with every target model's answer."""
    samples = load_samples(CORPUS)
    alpaca = samples.take(np.flatnonzero([s.startswith("alpaca_eval") for s in samples.sources]))
    keep, _ = split_by_prompt(alpaca, (0.5, 0.5), 1)
    return alpaca.take(keep)


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_leave_one_family_out_coverage_stays_near_target(family: str) -> None:
    """Every model of `family` is held out of training; its rows are predicted as unseen
    models of an unseen family, and their coverage stays near the 90% target."""
    samples = _corpus_subset()
    fams = np.array([model_family(m) for m in samples.models])
    model = fit(samples.take(np.flatnonzero(fams != family)), seed=0, unseen_folds=3)
    held = samples.take(np.flatnonzero(fams == family))
    assert set(model.spec.tiers(held.models).tolist()) == {2}
    report = evaluate(model, held, max_tokens=4096)
    assert 0.85 <= report["coverage"] <= 0.98
    assert report["miss_below_lo"] <= 0.08 and report["miss_above_hi"] <= 0.10
