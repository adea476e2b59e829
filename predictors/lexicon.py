"""A learned word lexicon: how much longer than its model's average a prompt's answer runs.

The keyword flags in `features.py` are hand-picked; this column learns its words. Each training
prompt gets the label "mean over its rows of log1p(length) minus that target model's mean" (the
same prompt answered by many models gives a clean per-prompt label), and a ridge regression on
the set of words a prompt contains (binary, scaled by 1/sqrt(number of known words)) turns every
word into a weight. Scoring a prompt is one set intersection and a sum: a few microseconds, no
tokenizer, no model download. Invariant: the score depends only on the prompt's word set and the
stored (words, weights, intercept); the same words give the same score bit for bit.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
RIDGE_LAMBDA: Final = 1.0
MIN_PROMPTS_PER_WORD: Final = 2
MAX_WORDS: Final = 20000


@dataclass(frozen=True, slots=True)
class Lexicon:
    """Per-word weights; score = intercept + sum(weights of known words) / sqrt(their count)."""

    intercept: float
    words: tuple[str, ...]
    weights: tuple[float, ...]
    _weight: dict[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.words) != len(self.weights) or len(set(self.words)) != len(self.words):
            raise ValueError("lexicon words must be distinct, one weight each")
        if not all(math.isfinite(v) for v in (self.intercept, *self.weights)):
            raise ValueError("lexicon weights must be finite")
        object.__setattr__(self, "_weight", dict(zip(self.words, self.weights, strict=True)))

    def score(self, words: set[str]) -> float:
        known = words & self._weight.keys()
        if not known:
            return self.intercept
        total = math.fsum(self._weight[w] for w in sorted(known))
        return self.intercept + total / math.sqrt(len(known))

    def to_json(self) -> dict[str, Any]:
        return {
            "intercept": self.intercept,
            "words": list(self.words),
            "weights": list(self.weights),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Lexicon:
        weights = tuple(float(w) for w in data["weights"])
        return cls(float(data["intercept"]), tuple(str(w) for w in data["words"]), weights)


def fit_lexicon(
    word_sets: Sequence[set[str]],
    labels: FloatArray,
    *,
    ridge: float = RIDGE_LAMBDA,
    min_prompts: int = MIN_PROMPTS_PER_WORD,
) -> Lexicon:
    """Ridge weights (solved in the n-prompts dual) for the words of >= min_prompts prompts."""
    if len(word_sets) != len(labels):
        raise ValueError("one label per prompt")
    counts = Counter(w for words in word_sets for w in words)
    kept = [w for w, c in counts.most_common(MAX_WORDS) if c >= min_prompts]
    vocab = tuple(sorted(kept))
    mean = float(np.mean(labels)) if len(labels) else 0.0
    if not vocab or len(labels) < 2:
        return Lexicon(mean, (), ())
    column = {w: j for j, w in enumerate(vocab)}
    x = np.zeros((len(word_sets), len(vocab)))
    for i, words in enumerate(word_sets):
        cols = [column[w] for w in words if w in column]
        if cols:
            x[i, cols] = 1.0 / math.sqrt(len(cols))
    gram = x @ x.T
    dual = np.linalg.solve(gram + ridge * np.eye(len(gram)), labels - mean)
    weights = x.T @ dual
    return Lexicon(mean, vocab, tuple(round(float(w), 6) for w in weights))


def prompt_labels(
    prompt_ids: Sequence[str], models: Sequence[str], log_y: FloatArray
) -> tuple[list[str], FloatArray]:
    """(distinct prompt ids, label per id): mean of log1p(y) minus its target model's mean."""
    by_model: dict[str, list[float]] = {}
    for m, v in zip(models, log_y.tolist(), strict=True):
        by_model.setdefault(m, []).append(v)
    model_mean = {m: math.fsum(v) / len(v) for m, v in by_model.items()}
    per_prompt: dict[str, list[float]] = {}
    for p, m, v in zip(prompt_ids, models, log_y.tolist(), strict=True):
        per_prompt.setdefault(p, []).append(v - model_mean[m])
    ids = sorted(per_prompt)
    return ids, np.array([math.fsum(per_prompt[p]) / len(per_prompt[p]) for p in ids])


def fold_of(ids: Iterable[str], folds: int, seed: int) -> dict[str, int]:
    """A seeded assignment of distinct ids to `folds` folds of near-equal size."""
    distinct = sorted(set(ids))
    order = np.random.default_rng(seed).permutation(len(distinct))
    return {distinct[i]: int(rank % folds) for rank, i in enumerate(order)}
