"""The default length model shipped with kvsched, and `load_predictor` (issue 3,
docs/predictors.md).

`--model default` (CLI) and `model=default` (simulator intervals) name `DEFAULT_MODEL_PATH`, a
P2 quantile model (d_lo = d_hi = 0.05) trained by `benchmarks/train_default_model.py` on the
shipped corpus data/text/lengths.jsonl.gz minus its documented test split: `split_train_test`
with `TEST_FRACTION` of the prompts held out under seed `SPLIT_SEED` (by prompt, never by row).
Invariant: the default model never saw a row of that test split, so numbers on it are honest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import numpy as np

from predictors.base import LengthSamples
from predictors.model import LengthModel, ModelFileError
from predictors.splits import split_by_prompt

__all__ = [
    "DEFAULT_MODEL_PATH",
    "DEFAULT_NAME",
    "SPLIT_SEED",
    "TEST_FRACTION",
    "load_predictor",
    "split_train_test",
]

DEFAULT_NAME: Final = "default"
DEFAULT_MODEL_PATH: Final = Path(__file__).resolve().parent / "models" / "default.kvp"
TEST_FRACTION: Final = 0.2
SPLIT_SEED: Final = 0


def split_train_test(
    samples: LengthSamples, test_fraction: float = TEST_FRACTION, seed: int = SPLIT_SEED
) -> tuple[LengthSamples, LengthSamples]:
    """(train, test) rows, `test_fraction` of the prompt ids held out; (all, empty) for 0."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test fraction must be in [0, 1), got {test_fraction}")
    if test_fraction == 0.0:
        return samples, samples.take(np.zeros(0, dtype=np.int64))
    train_rows, test_rows = split_by_prompt(samples, (1.0 - test_fraction, test_fraction), seed)
    return samples.take(train_rows), samples.take(test_rows)


def load_predictor(name_or_path: str | Path) -> LengthModel:
    """The model named "default" (the shipped file) or the model file at `name_or_path`.

    Raises ModelFileError (one line, naming the file) for a missing, bad or mismatched file.
    """
    if str(name_or_path) != DEFAULT_NAME:
        return LengthModel.load(name_or_path)
    if not DEFAULT_MODEL_PATH.is_file():
        raise ModelFileError(
            f"{DEFAULT_MODEL_PATH}: the default model is missing from this installation; "
            "rebuild it with benchmarks/train_default_model.py or pass a model file"
        )
    return LengthModel.load(DEFAULT_MODEL_PATH)
