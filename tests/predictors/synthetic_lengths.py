"""Synthetic (prompt, model) -> output-length rows shaped like AlpacaEval (tests only).

Each prompt comes from a task template (factoid, translate, summarise N sentences, code, essay,
list N ideas, explain, chat) answered by every target model. log length = task base (+ parsed
N or prompt length) + model offset + an unobserved per-prompt effect + heavy-tailed (Student-t)
noise whose scale depends on task and model. The per-prompt effect and the tails make raw
quantile regression overfit the training prompts and undercover new ones, as on real data.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from predictors.base import LengthSamples
from predictors.evaluate import evaluate
from predictors.model import Kind, LengthModel, fit

HELD_OUT_CAP = 8192  # max_tokens of every held-out request
MODELS = ("alpha-7b", "beta-13b", "gamma-70b", "delta-chat", "eps-instruct", "zeta-large")
_MODEL_SHIFT = np.array([-0.45, -0.2, 0.0, 0.15, 0.35, 0.6])
_MODEL_SCALE = np.array([0.8, 1.0, 1.0, 1.2, 0.9, 1.4])
_WORDS = (
    "river market solar engine garden protocol history violin ocean theory budget village "
    "network harvest planet ledger museum kernel forest recipe tunnel climate archive pixel"
).split()
_NUMBERS = ("two", "three", "five", "seven", "ten")
_NUMBER_VALUE = {"two": 2, "three": 3, "five": 5, "seven": 7, "ten": 10}


def _filler(rng: np.random.Generator, low: int, high: int) -> str:
    return " ".join(rng.choice(_WORDS, size=int(rng.integers(low, high))))


def _prompt(task: int, rng: np.random.Generator) -> tuple[str, float, float]:
    """(prompt text, log-length mean before model/prompt effects, noise sigma) for a task."""
    topic = _filler(rng, 2, 6)
    number = str(rng.choice(_NUMBERS))
    count = _NUMBER_VALUE[number]
    if task == 0:
        return f"What is the {topic}?", np.log(40.0), 0.5
    if task == 1:
        text = _filler(rng, 5, 120)
        return f"Translate into French:\n{text}", np.log(1.6 * len(text) / 4 + 5), 0.2
    if task == 2:
        body = _filler(rng, 80, 400)
        return f"Summarize this text in {number} sentences.\n\n{body}", np.log(22.0 * count), 0.3
    if task == 3:
        return f"Write a Python function that computes the {topic}.", np.log(260.0), 0.7
    if task == 4:
        return f"Write an essay about the {topic}.", np.log(650.0), 0.45
    if task == 5:
        return f"List {number} ideas for a {topic}.", np.log(30.0 * count), 0.4
    if task == 6:
        return f"Explain in detail how the {topic} works?", np.log(420.0), 0.55
    return f"{topic} {_filler(rng, 1, 30)}", np.log(160.0), 0.9


def make_samples(
    num_prompts: int = 800, *, seed: int = 0, max_output_tokens: int = 8192, id_prefix: str = "p"
) -> LengthSamples:
    """num_prompts x len(MODELS) rows; prompt ids '<id_prefix><i>', source 'synthetic/task<t>'."""
    rng = np.random.default_rng(seed)
    prompts: list[str] = []
    ids: list[str] = []
    models: list[str] = []
    sources: list[str] = []
    tokens: list[int] = []
    outputs: list[int] = []
    for i in range(num_prompts):
        task = int(rng.integers(0, 8))
        text, mean, sigma = _prompt(task, rng)
        prompt_effect = rng.normal(0.0, 0.35)
        noise = rng.standard_t(4, size=len(MODELS)) * sigma * _MODEL_SCALE * 0.8
        log_y = mean + prompt_effect + _MODEL_SHIFT + noise
        lengths = np.clip(np.round(np.exp(log_y)), 1, max_output_tokens).astype(np.int64)
        for m, length in zip(MODELS, lengths, strict=True):
            prompts.append(text)
            ids.append(f"{id_prefix}{i}")
            models.append(m)
            sources.append(f"synthetic/task{task}")
            tokens.append(max(1, len(text) // 4))
            outputs.append(int(length))
    return LengthSamples(
        tuple(prompts),
        tuple(ids),
        tuple(models),
        tuple(sources),
        np.asarray(tokens, dtype=np.int64),
        np.asarray(outputs, dtype=np.int64),
    )


@functools.cache
def dev_samples() -> LengthSamples:
    """The rows models are fitted on (1000 prompts); shared by the predictor tests."""
    return make_samples(1000, seed=0, id_prefix="d")


@functools.cache
def held_out_samples() -> LengthSamples:
    """Held-out rows (1200 fresh prompts, distinct ids) for coverage checks."""
    return make_samples(1200, seed=100, id_prefix="t")


@functools.cache
def fitted_model(kind: Kind = "quantile", mondrian: bool = False) -> LengthModel:
    """A model fitted once per test session on `dev_samples()` (seed 0)."""
    return fit(dev_samples(), kind=kind, mondrian=mondrian, seed=0)


@functools.cache
def held_out_report(
    kind: Kind = "quantile", mondrian: bool = False, calibrated: bool = True
) -> dict[str, Any]:
    """`evaluate` of `fitted_model(kind, mondrian)` on `held_out_samples()`, computed once."""
    model = fitted_model(kind, mondrian)
    chosen = model if calibrated else model.uncalibrated()
    return evaluate(chosen, held_out_samples(), max_tokens=HELD_OUT_CAP)
