"""The predictor contract: a batch of prompts in, calibrated output-length intervals out.

`predict` gives each request [lo, hi] with 1 <= lo <= hi <= its `max_tokens`; `refine` tightens
the interval of a request still running after k generated tokens (lo >= k + 1 always, hi
recalibrated so survivors stay covered; docs/predictors.md, "Refinement"). `LengthSamples` is what
every trainer reads: one row per (prompt, target model) with the true output length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

IntArray = NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class PromptBatch:
    """Predictor input for n requests.

    prompts: prompt texts (chat prompts flattened to text).
    prompt_tokens: prompt lengths in the serving tokenizer's tokens.
    models: target model per request ("" when unknown); the same prompt gets different lengths
        from different models, so the model is a feature.
    max_tokens: each request's hard output cap; hi never exceeds it.
    """

    prompts: tuple[str, ...]
    prompt_tokens: IntArray
    models: tuple[str, ...]
    max_tokens: IntArray

    def __post_init__(self) -> None:
        n = len(self.prompts)
        if not (len(self.prompt_tokens) == len(self.models) == len(self.max_tokens) == n):
            raise ValueError("prompt batch columns must have equal length")
        if n and int(self.max_tokens.min()) < 1:
            raise ValueError("max_tokens must be >= 1")

    def __len__(self) -> int:
        return len(self.prompts)


@dataclass(frozen=True, slots=True)
class LengthSamples:
    """Training / evaluation rows: (prompt, model) -> true output length.

    prompt_ids group rows that share a prompt: train / calibration / test splits are made by
    prompt id, never by row. sources name the data set each row came from (e.g.
    "alpaca_eval/helpful_base", "arena_hard/coding", "log").
    """

    prompts: tuple[str, ...]
    prompt_ids: tuple[str, ...]
    models: tuple[str, ...]
    sources: tuple[str, ...]
    prompt_tokens: IntArray
    output_tokens: IntArray

    def __post_init__(self) -> None:
        n = len(self.prompts)
        columns = (
            self.prompt_ids,
            self.models,
            self.sources,
            self.prompt_tokens,
            self.output_tokens,
        )
        if any(len(c) != n for c in columns):
            raise ValueError("length sample columns must have equal length")
        if n and int(self.output_tokens.min()) < 1:
            raise ValueError("output_tokens must be >= 1")

    def __len__(self) -> int:
        return len(self.prompts)

    def take(self, rows: NDArray[np.int64]) -> LengthSamples:
        """The subset at `rows` (in that order)."""
        pick = [int(i) for i in rows]
        return LengthSamples(
            tuple(self.prompts[i] for i in pick),
            tuple(self.prompt_ids[i] for i in pick),
            tuple(self.models[i] for i in pick),
            tuple(self.sources[i] for i in pick),
            self.prompt_tokens[rows],
            self.output_tokens[rows],
        )

    def batch(self, max_tokens: int | IntArray) -> PromptBatch:
        caps = np.broadcast_to(np.asarray(max_tokens, dtype=np.int64), (len(self),)).copy()
        return PromptBatch(self.prompts, self.prompt_tokens, self.models, caps)


class IntervalPredictor(Protocol):
    """A calibrated output-length interval model (docs/predictors.md)."""

    def predict(self, batch: PromptBatch) -> tuple[IntArray, IntArray]:
        """Return (lo, hi) int64 arrays with 1 <= lo <= hi <= batch.max_tokens."""
        ...

    def refine(
        self, lo: IntArray, hi: IntArray, generated: IntArray, max_tokens: IntArray
    ) -> tuple[IntArray, IntArray]:
        """Intervals of requests still running after `generated` tokens (each >= 1).

        lo becomes at least generated + 1; hi is raised for survivors so that coverage among
        requests that lived this long stays at the calibrated level; hi <= max_tokens.
        """
        ...
