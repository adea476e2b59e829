"""Honest intervals for target models absent from training: offsets fitted on held-out models.

A model the predictor never saw is predicted from its prompt and its family (tier 1: "llama-3-
70b" is an unseen member of the seen Llama family) or from the prompt alone (tier 2: no seen
family). Split conformal offsets fitted on seen models' calibration rows would be too narrow
for such rows: the base model learned those models. `fit_unseen_offsets` cross-fits instead:
the base model is retrained with a fold of target models (tier 1) or of families (tier 2) left
out, and the left-out calibration rows, predicted with their model (and family) hidden, give the
conformity scores. Invariant: each tier's offset is never below the seen models' global offset,
so an unseen model's interval is never narrower, in log space, than the seen calibration allows.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from predictors.base import LengthSamples
from predictors.conformal import conformal_offset
from predictors.families import model_family
from predictors.features import featurize, hide_model_columns
from predictors.lexicon import fold_of
from predictors.quantile_model import QuantileBoosters

FloatArray = NDArray[np.float64]
logger = logging.getLogger("kvsched.predictor")
DEFAULT_FOLDS: Final = 4
TIER_NAMES: Final = ("seen", "family", "agnostic")


@dataclass(frozen=True, slots=True)
class UnseenOffsets:
    """Log-space (lo, hi) offsets for unseen-model rows: tier 1 (seen family), tier 2 (none).

    method: "cross-fit" (held-out models / families) or "pooled" (too few models or families
    to hold any out: the full model's calibration rows with the model hidden, less honest).
    """

    family_lo: float
    family_hi: float
    agnostic_lo: float
    agnostic_hi: float
    method: str

    def __post_init__(self) -> None:
        values = (self.family_lo, self.family_hi, self.agnostic_lo, self.agnostic_hi)
        if not all(math.isfinite(v) for v in values):
            raise ValueError("unseen-model offsets must be finite")
        if self.method not in ("cross-fit", "pooled"):
            raise ValueError(f"unknown unseen-offset method {self.method!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "family": [self.family_lo, self.family_hi],
            "agnostic": [self.agnostic_lo, self.agnostic_hi],
            "method": self.method,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UnseenOffsets:
        (a, b), (c, d) = data["family"], data["agnostic"]
        return cls(float(a), float(b), float(c), float(d), str(data["method"]))


def _scores(base: QuantileBoosters, cal: LengthSamples, family: bool) -> FloatArray:
    """(n, 2) conformity scores (q_lo - log y, log y - q_hi) with the model (+ family) hidden."""
    x = hide_model_columns(base.spec, featurize(base.spec, cal.batch(1)), family=family)
    q = base.predict_log_features(x)
    log_y = np.log1p(cal.output_tokens.astype(np.float64))
    return np.column_stack([q[:, 0] - log_y, log_y - q[:, 2]])


def _cross_fit_scores(
    fit_base: Callable[[LengthSamples], QuantileBoosters],
    train: LengthSamples,
    cal: LengthSamples,
    groups_train: list[str],
    groups_cal: list[str],
    *,
    keep_family: bool,
    folds: int,
    seed: int,
) -> FloatArray | None:
    """Scores of calibration rows from base models that never saw their group; None if < 2."""
    distinct = sorted(set(groups_train) | set(groups_cal))
    k = min(folds, len(distinct))
    if k < 2:
        return None
    fold = fold_of(distinct, k, seed)
    train_fold = np.array([fold[g] for g in groups_train])
    cal_fold = np.array([fold[g] for g in groups_cal])
    parts: list[FloatArray] = []
    for f in range(k):
        cal_rows = np.flatnonzero(cal_fold == f)
        train_rows = np.flatnonzero(train_fold != f)
        if not len(cal_rows) or not len(train_rows):
            continue
        base = fit_base(train.take(train_rows))
        held = cal.take(cal_rows)
        if keep_family:  # tier 1 needs the left-out model's family among the fold's families
            known = base.spec.family_index(held.models) < len(base.spec.families)
            held = held.take(np.flatnonzero(known))
            if not len(held):
                continue
        parts.append(_scores(base, held, family=not keep_family))
    return np.vstack(parts) if parts else None


def _offsets(scores: FloatArray | None, d_lo: float, d_hi: float) -> tuple[float, float]:
    if scores is None or not len(scores):
        return math.inf, math.inf
    return conformal_offset(scores[:, 0], d_lo), conformal_offset(scores[:, 1], d_hi)


def fit_unseen_offsets(
    fit_base: Callable[[LengthSamples], QuantileBoosters],
    base: QuantileBoosters,
    train: LengthSamples,
    cal: LengthSamples,
    *,
    d_lo: float,
    d_hi: float,
    seen: tuple[float, float],
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
) -> UnseenOffsets:
    """Tier offsets cross-fitted over target models (tier 1) and families (tier 2).

    `fit_base` refits the base model on a subset of the training rows (same settings); `seen`
    is the seen models' global (c_lo, c_hi), the floor for both tiers. With fewer than two
    models or families to hold out, the full `base` scores the calibration rows with the model
    hidden ("pooled"), and a tier whose cross-fitted rows are too few for the budget uses the
    other tier's offsets.
    """
    fam_train = [model_family(m) or f"model:{m}" for m in train.models]
    fam_cal = [model_family(m) or f"model:{m}" for m in cal.models]
    kw = {"folds": folds, "seed": seed}
    tier1 = _cross_fit_scores(
        fit_base, train, cal, list(train.models), list(cal.models), keep_family=True, **kw
    )
    tier2 = _cross_fit_scores(fit_base, train, cal, fam_train, fam_cal, keep_family=False, **kw)
    method = "cross-fit"
    f_lo, f_hi = _offsets(tier1, d_lo, d_hi)
    a_lo, a_hi = _offsets(tier2, d_lo, d_hi)
    if math.isinf(a_lo) or math.isinf(a_hi):
        method = "pooled"
        a_lo, a_hi = _offsets(_scores(base, cal, family=True), d_lo, d_hi)
    if math.isinf(f_lo) or math.isinf(f_hi):
        f_lo, f_hi = a_lo, a_hi
    if math.isinf(a_lo) or math.isinf(a_hi):  # too few calibration rows for any budget
        a_lo, a_hi = f_lo, f_hi = seen
    lo_floor, hi_floor = seen
    return UnseenOffsets(
        max(f_lo, lo_floor), max(f_hi, hi_floor), max(a_lo, lo_floor), max(a_hi, hi_floor), method
    )
