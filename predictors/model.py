"""`LengthModel`: a calibrated output-length interval predictor (docs/predictors.md, "The model").

A base model (P1 histogram or P2 LightGBM quantiles, both in log1p space) + split-CQR offsets +
the refinement ladder. `fit` splits the given rows by prompt into train / calibration; the
caller keeps its own test prompts apart. Invariant: predict and refine give int64 arrays with
1 <= lo <= hi <= max_tokens. Files: `save` / `load` (see model_file.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import NDArray

from predictors.base import IntArray, LengthSamples, PromptBatch
from predictors.conformal import (
    MIN_SURVIVORS,
    CqrOffsets,
    RefineLadder,
    fit_cqr,
    fit_ladder,
    to_interval,
)
from predictors.features import FeatureSpec, featurize, hide_model_columns, prompt_words
from predictors.histogram import HistogramQuantiles, fit_histogram
from predictors.lexicon import Lexicon, fit_lexicon, fold_of, prompt_labels
from predictors.model_file import ModelFileError, read_model_file, write_model_file
from predictors.quantile_model import QuantileBoosters, QuantileConfig, fit_quantile_boosters
from predictors.splits import split_by_prompt
from predictors.survivor import SurvivorModel, fit_survivor
from predictors.unseen import DEFAULT_FOLDS, UnseenOffsets, fit_unseen_offsets

if TYPE_CHECKING:
    from predictors.embedding_pca import EmbeddingProjection
PCA_MEMBER = "embedding_pca.json"  # == predictors.embedding_pca.PCA_MEMBER (kept import-free)

Kind = Literal["histogram", "quantile"]
FloatArray = NDArray[np.float64]
_BOOSTER_MEMBERS = ("q_lo.txt", "q_mid.txt", "q_hi.txt")
_HISTOGRAM_MEMBER = "histogram.json"
_SURVIVOR_MEMBERS = ("survivor_lo.txt", "survivor_hi.txt")
_UNCAPPED = np.iinfo(np.int64).max // 4
AUGMENT_FRACTION = 0.5  # share of training rows repeated as "unseen model" (and again, family)
LEXICON_FOLDS = 5  # training rows get out-of-fold lexicon scores, as unseen prompts would
logger = logging.getLogger("kvsched.predictor")

__all__ = ["LengthModel", "ModelFileError", "TrainingInfo", "fit", "training_data_sha256"]


def training_data_sha256(samples: LengthSamples) -> str:
    """sha256 over the sorted (prompt_id, model, output_tokens) rows, one JSON array per line."""
    rows = sorted(
        zip(samples.prompt_ids, samples.models, samples.output_tokens.tolist(), strict=True)
    )
    digest = hashlib.sha256()
    for row in rows:
        digest.update(json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()


def _created_by() -> str:
    try:
        return f"kvsched {metadata.version('kvsched')}"
    except metadata.PackageNotFoundError:
        return "kvsched (not installed)"


@dataclass(frozen=True, slots=True)
class TrainingInfo:
    """Provenance kept in the model file."""

    data_sha256: str
    num_train: int
    num_cal: int
    seed: int
    mondrian: bool
    ladder_rule: str
    created_by: str

    def __post_init__(self) -> None:
        if self.num_train < 1 or self.num_cal < 1:
            raise ValueError("a model needs training and calibration rows")
        if self.ladder_rule not in ("ratio", "ratio_given_hi"):
            raise ValueError(f"unknown ladder rule {self.ladder_rule!r}")


@dataclass(frozen=True, slots=True, eq=False)
class LengthModel:
    """Implements `IntervalPredictor`: calibrated [lo, hi] per prompt, refined while running."""

    kind: Kind
    base: QuantileBoosters | HistogramQuantiles
    offsets: CqrOffsets
    ladder: RefineLadder
    d_lo: float
    d_hi: float
    info: TrainingInfo
    unseen: UnseenOffsets | None = None
    survivor: SurvivorModel | None = None
    _reported: set[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_reported", set())
        if not (0.0 < self.d_lo < 0.5 and 0.0 < self.d_hi < 0.5):
            raise ValueError(f"miss budgets must be in (0, 0.5): {self.d_lo}, {self.d_hi}")
        expected = QuantileBoosters if self.kind == "quantile" else HistogramQuantiles
        if self.kind not in ("histogram", "quantile") or not isinstance(self.base, expected):
            raise ValueError(f"kind {self.kind!r} does not match base {type(self.base).__name__}")
        levels = (self.d_lo, 0.5, 1.0 - self.d_hi)
        if isinstance(self.base, QuantileBoosters) and self.base.quantiles != levels:
            raise ValueError(f"booster quantiles {self.base.quantiles} do not match {levels}")

    @property
    def spec(self) -> FeatureSpec:
        return self.base.spec

    def predict_log(self, batch: PromptBatch) -> FloatArray:
        """Uncalibrated (n, 3) log1p quantiles [q_lo, median, q_hi] of the base model."""
        return self.base.predict_log(batch)

    def predict(self, batch: PromptBatch) -> tuple[IntArray, IntArray]:
        q = self.base.predict_log(batch)
        c_lo, c_hi = self.offsets.for_models(batch.models)
        tiers = self.spec.tiers(batch.models)
        if tiers.any():
            self._report_unseen(batch.models, tiers)
            if self.unseen is not None:
                u = self.unseen
                c_lo = np.select([tiers == 1, tiers == 2], [u.family_lo, u.agnostic_lo], c_lo)
                c_hi = np.select([tiers == 1, tiers == 2], [u.family_hi, u.agnostic_hi], c_hi)
        return to_interval(np.expm1(q[:, 0] - c_lo), np.expm1(q[:, 2] + c_hi), batch.max_tokens)

    def _report_unseen(self, models: Sequence[str], tiers: IntArray) -> None:
        """One log line per target-model name absent from training, the first time it is seen."""
        for i in np.flatnonzero(tiers).tolist():
            name = models[i]
            if name in self._reported:
                continue
            self._reported.add(name)
            shown = repr(name) if name else "(none given)"
            if self.unseen is None:
                how = "this model file has no unseen-model calibration, so its intervals may not "
                how += "hold for it; retrain with this version"
            elif tiers[i] == 1:
                family = self.spec.family_of(name)
                how = f"predicting it as an unseen model of the seen {family!r} family, "
                how += "with offsets calibrated on held-out models (wider intervals)"
            else:
                how = "no seen family either: predicting from the prompt alone, with offsets "
                how += "calibrated on held-out families (wider intervals)"
            logger.warning("length predictor: target model %s was not in training; %s", shown, how)

    def refine(
        self, lo: IntArray, hi: IntArray, generated: IntArray, max_tokens: IntArray
    ) -> tuple[IntArray, IntArray]:
        """The ladder's refinement of the current interval (all this signature can know)."""
        return self.ladder.refine(lo, hi, generated, max_tokens)

    def refine_admitted(
        self,
        admitted_lo: IntArray,
        admitted_hi: IntArray,
        lo: IntArray,
        hi: IntArray,
        generated: IntArray,
        max_tokens: IntArray,
    ) -> tuple[IntArray, IntArray]:
        """Refine knowing the interval each request was admitted with (the prompt's prediction):
        the survivor model re-predicts the remaining length when this file has one; without one
        (files from before it), exactly `refine`."""
        if self.survivor is None:
            return self.ladder.refine(lo, hi, generated, max_tokens)
        return self.survivor.refine(admitted_lo, admitted_hi, lo, hi, generated, max_tokens)

    def uncalibrated(self) -> LengthModel:
        """The same base model with zero conformal offsets (for comparisons only)."""
        zero = None if self.unseen is None else UnseenOffsets(0.0, 0.0, 0.0, 0.0, "pooled")
        return dataclasses.replace(self, offsets=CqrOffsets(0.0, 0.0), unseen=zero)

    def save(self, path: str | Path) -> None:
        """Write the versioned, self-describing model file (zip, no pickle)."""
        header: dict[str, Any] = {
            "kind": self.kind,
            "created_by": self.info.created_by,
            "d_lo": self.d_lo,
            "d_hi": self.d_hi,
            "features": self.spec.to_json(),
            "calibration": self.offsets.to_json(),
            "ladder": self.ladder.to_json(),
            "training": dataclasses.asdict(self.info),
        }
        if self.unseen is not None:
            header["unseen"] = self.unseen.to_json()
        if isinstance(self.base, QuantileBoosters):
            header["quantiles"] = list(self.base.quantiles)
            members = dict(zip(_BOOSTER_MEMBERS, self.base.model_strings(), strict=True))
        else:
            members = {_HISTOGRAM_MEMBER: json.dumps(self.base.to_json())}
        if self.survivor is not None:
            header["survivor"] = self.survivor.header()
            members.update(zip(_SURVIVOR_MEMBERS, self.survivor.model_strings(), strict=True))
        if self.spec.embedding is not None:
            members[PCA_MEMBER] = json.dumps(self.spec.embedding.arrays_json())
        write_model_file(path, header, members)

    @classmethod
    def load(cls, path: str | Path) -> LengthModel:
        """Read a model file; any bad, truncated, foreign or mismatched file -> ModelFileError."""
        header, members = read_model_file(path)
        try:
            return _from_parts(header, members)
        except KeyError as exc:
            raise ModelFileError(f"{path}: invalid model content: missing {exc}") from exc
        except Exception as exc:  # any other malformed content becomes one clear error
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelFileError(f"{path}: invalid model content: {cause}") from exc


def _from_parts(header: dict[str, Any], members: dict[str, str]) -> LengthModel:
    pca = members.get(PCA_MEMBER)
    spec = FeatureSpec.from_json(header["features"], None if pca is None else json.loads(pca))
    kind = header["kind"]
    base: QuantileBoosters | HistogramQuantiles
    if kind == "quantile":
        texts = [members[name] for name in _BOOSTER_MEMBERS]
        base = QuantileBoosters.from_strings(spec, header["quantiles"], texts)
    elif kind == "histogram":
        base = HistogramQuantiles.from_json(spec, json.loads(members[_HISTOGRAM_MEMBER]))
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return LengthModel(
        kind,
        base,
        CqrOffsets.from_json(header["calibration"]),
        RefineLadder.from_json(header["ladder"]),
        float(header["d_lo"]),
        float(header["d_hi"]),
        TrainingInfo(**header["training"]),
        UnseenOffsets.from_json(header["unseen"]) if "unseen" in header else None,
        _survivor_from(header, members),
    )


def _survivor_from(header: dict[str, Any], members: dict[str, str]) -> SurvivorModel | None:
    if "survivor" not in header:  # files written before the survivor model: the ladder only
        return None
    texts = [members[name] for name in _SURVIVOR_MEMBERS]
    return SurvivorModel.from_parts(header["survivor"], texts)


def _lexicon_scores(train: LengthSamples, seed: int) -> tuple[Lexicon, NDArray[np.float64]]:
    """The lexicon fitted on all training prompts, and each training row's out-of-fold score
    (from a lexicon that never saw its prompt, as a served prompt will be scored)."""
    words = {p: prompt_words(text) for p, text in zip(train.prompt_ids, train.prompts, strict=True)}
    ids, labels = prompt_labels(
        train.prompt_ids, train.models, np.log1p(train.output_tokens.astype(np.float64))
    )
    full = fit_lexicon([words[p] for p in ids], labels)
    folds = min(LEXICON_FOLDS, len(ids))
    if folds < 2:
        return full, np.array([full.score(words[p]) for p in train.prompt_ids])
    fold = fold_of(ids, folds, seed)
    score: dict[str, float] = {}
    for f in range(folds):
        inside = [i for i, p in enumerate(ids) if fold[p] != f]
        part = fit_lexicon([words[ids[i]] for i in inside], labels[inside])
        score.update((p, part.score(words[p])) for p in ids if fold[p] == f)
    return full, np.array([score[p] for p in train.prompt_ids])


def _row_draw(samples: LengthSamples, seed: int, salt: str) -> NDArray[np.float64]:
    """A uniform [0, 1) number per row from its (prompt id, model): the same whatever the order."""
    out = np.empty(len(samples))
    for i, (p, m) in enumerate(zip(samples.prompt_ids, samples.models, strict=True)):
        digest = hashlib.blake2b(f"{seed}\0{salt}\0{p}\0{m}".encode(), digest_size=8).digest()
        out[i] = int.from_bytes(digest, "little") / 2.0**64
    return out


def _fit_base(
    kind: Kind,
    train: LengthSamples,
    *,
    d_lo: float,
    d_hi: float,
    seed: int,
    config: QuantileConfig | None,
    embedding: EmbeddingProjection | None = None,
    unseen_aware: bool = True,
    lexicon: bool = True,
) -> QuantileBoosters | HistogramQuantiles:
    y = train.output_tokens
    if kind == "histogram":
        spec = FeatureSpec.for_models(train.models, embedding)
        return fit_histogram(spec, train.prompt_tokens, train.models, y, d_lo=d_lo, d_hi=d_hi)
    if kind != "quantile":
        raise ValueError(f"unknown model kind {kind!r}; expected 'histogram' or 'quantile'")
    if not unseen_aware and not lexicon:
        spec = FeatureSpec.for_models(train.models, embedding)
        x = featurize(spec, train.batch(1))
        return fit_quantile_boosters(spec, x, y, d_lo=d_lo, d_hi=d_hi, seed=seed, config=config)
    lex, oof = _lexicon_scores(train, seed) if lexicon else (None, None)
    spec = FeatureSpec.for_models(train.models, embedding, families=True, lexicon=lex)
    x = featurize(spec, train.batch(1))
    if oof is not None:
        x[:, spec.lexicon_column()] = oof
    if unseen_aware:  # repeat a share of the rows as unseen models, then as unseen families
        model_rows = np.flatnonzero(_row_draw(train, seed, "model") < AUGMENT_FRACTION)
        both_rows = np.flatnonzero(_row_draw(train, seed, "family") < AUGMENT_FRACTION)
        x = np.vstack(
            [
                x,
                hide_model_columns(spec, x[model_rows], family=False),
                hide_model_columns(spec, x[both_rows], family=True),
            ]
        )
        y = np.concatenate([y, y[model_rows], y[both_rows]])
    return fit_quantile_boosters(spec, x, y, d_lo=d_lo, d_hi=d_hi, seed=seed, config=config)


def _fit_embedding(
    train: LengthSamples, dims: int, cache_path: str | Path | None
) -> EmbeddingProjection:
    """PCA of the distinct training prompts' embeddings (each embedded once, via the cache)."""
    from predictors.embedding import EmbeddingCache
    from predictors.embedding_pca import fit_projection

    cache = EmbeddingCache(cache_path)
    return fit_projection(cache.embed(list(dict.fromkeys(train.prompts))), dims, cache)


def _check_fit_args(
    d_lo: float, d_hi: float, cal_fraction: float, kind: str, embedding_dims: int
) -> None:
    if embedding_dims < 0 or (embedding_dims and kind != "quantile"):
        raise ValueError(f"embedding_dims {embedding_dims}: must be >= 0, > 0 only for quantile")
    if not (0.0 < d_lo < 0.5 and 0.0 < d_hi < 0.5):
        raise ValueError(f"miss budgets must be in (0, 0.5): d_lo={d_lo}, d_hi={d_hi}")
    if not 0.0 < cal_fraction < 1.0:
        raise ValueError(f"cal_fraction must be in (0, 1), got {cal_fraction}")


def _with_ladder(
    model: LengthModel, cal: LengthSamples, rule: str, min_survivors: int
) -> LengthModel:
    """`model` with its refinement ladder calibrated on the calibration rows."""
    uncapped = np.iinfo(np.int64).max // 4
    hi_cal = model.predict(cal.batch(uncapped))[1] if rule == "ratio_given_hi" else None
    ladder = fit_ladder(cal.output_tokens, model.d_hi, hi=hi_cal, min_survivors=min_survivors)
    return dataclasses.replace(model, ladder=ladder)


def fit(
    samples: LengthSamples,
    *,
    kind: Kind = "quantile",
    d_lo: float = 0.05,
    d_hi: float = 0.05,
    mondrian: bool = False,
    mondrian_min_group: int = 200,
    seed: int = 0,
    cal_fraction: float = 0.25,
    ladder_rule: Literal["ratio", "ratio_given_hi"] = "ratio_given_hi",
    ladder_min_survivors: int = MIN_SURVIVORS,
    config: QuantileConfig | None = None,
    embedding_dims: int = 0,
    embedding_cache: str | Path | None = None,
    unseen_aware: bool = True,
    lexicon: bool = True,
    unseen_folds: int = DEFAULT_FOLDS,
    survivor: bool = False,
) -> LengthModel:
    """Fit base + CQR + ladder; the rows are split by prompt id into train / calibration.

    kind: "histogram" (P1) or "quantile" (P2, LightGBM; `config` tunes it). d_lo / d_hi: miss
    budgets below lo and above hi. mondrian: one CQR offset pair per target model with at least
    `mondrian_min_group` calibration rows (others use the global pair). ladder_rule: "ratio"
    (the plain conformal ratio) or "ratio_given_hi" (default: survivors already covered by their
    own hi need no lift; same guarantee, narrower early). Deterministic for a given seed.
    embedding_dims > 0 (quantile only; needs the optional wheel, see predictors/embedding.py):
    add that many PCA columns of the prompt's MiniLM embedding, embeddings cached in the
    `embedding_cache` .npz if given. 0 (default) leaves the model exactly as without the option.
    Quantile only: lexicon adds the learned word-lexicon column (`lexicon.py`); unseen_aware
    adds family columns, trains on rows repeated with the model (and family) hidden, and fits
    unseen-model offsets by cross-fitting over `unseen_folds` folds of held-out target models
    and families (`unseen.py`). Both False: the version-1 model of earlier releases.
    survivor (quantile only): also fit the remaining-length model (`survivor.py`) that
    `refine_admitted` uses while requests run: boosters on the training rows' survivors at the
    ladder's checkpoints, conformal offsets per checkpoint from the calibration rows.
    """
    _check_fit_args(d_lo, d_hi, cal_fraction, kind, embedding_dims)
    train_rows, cal_rows = split_by_prompt(samples, (1.0 - cal_fraction, cal_fraction), seed)
    if not len(train_rows) or not len(cal_rows):
        raise ValueError("too few distinct prompts to split into train and calibration")
    train, cal = samples.take(train_rows), samples.take(cal_rows)
    emb = _fit_embedding(train, embedding_dims, embedding_cache) if embedding_dims else None

    def fit_base(rows: LengthSamples) -> QuantileBoosters | HistogramQuantiles:
        return _fit_base(
            kind, rows, d_lo=d_lo, d_hi=d_hi, seed=seed, config=config, embedding=emb,
            unseen_aware=unseen_aware, lexicon=lexicon,
        )  # fmt: skip

    base = fit_base(train)
    q = base.predict_log(cal.batch(1))
    log_y = np.log1p(cal.output_tokens.astype(np.float64))
    groups = cal.models if mondrian else None
    offsets = fit_cqr(
        q[:, 0], q[:, 2], log_y, d_lo=d_lo, d_hi=d_hi, groups=groups, min_group=mondrian_min_group
    )
    digest = training_data_sha256(samples)
    info = TrainingInfo(digest, len(train), len(cal), seed, mondrian, ladder_rule, _created_by())
    unseen = None
    if isinstance(base, QuantileBoosters) and unseen_aware:

        def fit_quantile(rows: LengthSamples) -> QuantileBoosters:
            refit = fit_base(rows)
            assert isinstance(refit, QuantileBoosters)
            return refit

        unseen = fit_unseen_offsets(
            fit_quantile, base, train, cal, d_lo=d_lo, d_hi=d_hi,
            seen=(offsets.lo, offsets.hi), folds=unseen_folds, seed=seed,
        )  # fmt: skip
    ladder = RefineLadder((), (), 1)
    model = LengthModel(kind, base, offsets, ladder, d_lo, d_hi, info, unseen)
    model = _with_ladder(model, cal, ladder_rule, ladder_min_survivors)
    if not survivor or kind != "quantile" or not model.ladder.checkpoints:
        return model
    rows = []
    for part in (train, cal):
        lo, hi = model.predict(part.batch(_UNCAPPED))
        rows.append((lo, hi, part.output_tokens.astype(np.int64)))
    ladder = model.ladder
    surv = fit_survivor(
        rows[0], rows[1], ladder.checkpoints, d_lo=d_lo, d_hi=d_hi, seed=seed,
        min_survivors=ladder_min_survivors, stop=ladder.stop, config=config,
    )  # fmt: skip
    return dataclasses.replace(model, survivor=surv)
