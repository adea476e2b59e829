"""`LengthModel`: a calibrated output-length interval predictor (spec predictors.md §3.2-3.4).

A base model (P1 histogram or P2 LightGBM quantiles, both in log1p space) + split-CQR offsets +
the refinement ladder. `fit` splits the given rows by prompt into train / calibration; the
caller keeps its own test prompts apart. Invariant: predict and refine give int64 arrays with
1 <= lo <= hi <= max_tokens. Files: `save` / `load` (see model_file.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
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
from predictors.features import FeatureSpec, featurize
from predictors.histogram import HistogramQuantiles, fit_histogram
from predictors.model_file import ModelFileError, read_model_file, write_model_file
from predictors.quantile_model import QuantileBoosters, QuantileConfig, fit_quantile_boosters
from predictors.splits import split_by_prompt

if TYPE_CHECKING:
    from predictors.embedding_pca import EmbeddingProjection
PCA_MEMBER = "embedding_pca.json"  # == predictors.embedding_pca.PCA_MEMBER (kept import-free)

Kind = Literal["histogram", "quantile"]
FloatArray = NDArray[np.float64]
_BOOSTER_MEMBERS = ("q_lo.txt", "q_mid.txt", "q_hi.txt")
_HISTOGRAM_MEMBER = "histogram.json"

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

    def __post_init__(self) -> None:
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
        return to_interval(np.expm1(q[:, 0] - c_lo), np.expm1(q[:, 2] + c_hi), batch.max_tokens)

    def refine(
        self, lo: IntArray, hi: IntArray, generated: IntArray, max_tokens: IntArray
    ) -> tuple[IntArray, IntArray]:
        return self.ladder.refine(lo, hi, generated, max_tokens)

    def uncalibrated(self) -> LengthModel:
        """The same base model with zero conformal offsets (for comparisons only)."""
        return dataclasses.replace(self, offsets=CqrOffsets(0.0, 0.0))

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
        if isinstance(self.base, QuantileBoosters):
            header["quantiles"] = list(self.base.quantiles)
            members = dict(zip(_BOOSTER_MEMBERS, self.base.model_strings(), strict=True))
        else:
            members = {_HISTOGRAM_MEMBER: json.dumps(self.base.to_json())}
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
    )


def _fit_base(
    kind: Kind,
    train: LengthSamples,
    *,
    d_lo: float,
    d_hi: float,
    seed: int,
    config: QuantileConfig | None,
    embedding: EmbeddingProjection | None = None,
) -> QuantileBoosters | HistogramQuantiles:
    spec = FeatureSpec.for_models(train.models, embedding)
    y = train.output_tokens
    if kind == "histogram":
        return fit_histogram(spec, train.prompt_tokens, train.models, y, d_lo=d_lo, d_hi=d_hi)
    if kind == "quantile":
        x = featurize(spec, train.batch(1))
        return fit_quantile_boosters(spec, x, y, d_lo=d_lo, d_hi=d_hi, seed=seed, config=config)
    raise ValueError(f"unknown model kind {kind!r}; expected 'histogram' or 'quantile'")


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
) -> LengthModel:
    """Fit base + CQR + ladder; the rows are split by prompt id into train / calibration.

    kind: "histogram" (P1) or "quantile" (P2, LightGBM; `config` tunes it). d_lo / d_hi: miss
    budgets below lo and above hi. mondrian: one CQR offset pair per target model with at least
    `mondrian_min_group` calibration rows (others use the global pair). ladder_rule: "ratio"
    (spec §3.4 as written) or "ratio_given_hi" (default: survivors already covered by their
    own hi need no lift; same guarantee, narrower early). Deterministic for a given seed.
    embedding_dims > 0 (quantile only; needs the optional wheel, see predictors/embedding.py):
    add that many PCA columns of the prompt's MiniLM embedding, embeddings cached in the
    `embedding_cache` .npz if given. 0 (default) leaves the model exactly as without the option.
    """
    _check_fit_args(d_lo, d_hi, cal_fraction, kind, embedding_dims)
    train_rows, cal_rows = split_by_prompt(samples, (1.0 - cal_fraction, cal_fraction), seed)
    if not len(train_rows) or not len(cal_rows):
        raise ValueError("too few distinct prompts to split into train and calibration")
    train, cal = samples.take(train_rows), samples.take(cal_rows)
    emb = _fit_embedding(train, embedding_dims, embedding_cache) if embedding_dims else None
    base = _fit_base(kind, train, d_lo=d_lo, d_hi=d_hi, seed=seed, config=config, embedding=emb)
    q = base.predict_log(cal.batch(1))
    log_y = np.log1p(cal.output_tokens.astype(np.float64))
    groups = cal.models if mondrian else None
    offsets = fit_cqr(
        q[:, 0], q[:, 2], log_y, d_lo=d_lo, d_hi=d_hi, groups=groups, min_group=mondrian_min_group
    )
    digest = training_data_sha256(samples)
    info = TrainingInfo(digest, len(train), len(cal), seed, mondrian, ladder_rule, _created_by())
    model = LengthModel(kind, base, offsets, RefineLadder((), (), 1), d_lo, d_hi, info)
    return _with_ladder(model, cal, ladder_rule, ladder_min_survivors)
