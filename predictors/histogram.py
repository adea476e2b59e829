"""P1 baseline: per-stratum empirical length quantiles, no learning (docs/predictors.md).

Strata are prompt-length bins x target model. A stratum with fewer than `min_stratum` rows takes
its parent's quantiles: (model, bin) -> (model, all bins) -> (all models, bin) -> global. The
interval ends are finite-sample order statistics (ceil((n+1)(1-d)) per side), so within a stratum
they are already valid conformal bounds. Values are stored as log1p(tokens), like the P2 model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from predictors.base import IntArray, PromptBatch
from predictors.features import FeatureSpec

FloatArray = NDArray[np.float64]


def order_stat_quantiles(log_y: FloatArray, d_lo: float, d_hi: float) -> FloatArray:
    """[lo, median, hi] of `log_y`: lo misses at most d_lo below, hi at most d_hi above.

    lo is the floor((n+1) d_lo)-th smallest value, hi the ceil((n+1)(1-d_hi))-th smallest
    (clamped to the sample's range when n is too small for the budget).
    """
    values = np.sort(log_y)
    n = len(values)
    if n == 0:
        raise ValueError("cannot take quantiles of an empty stratum")
    k_lo = min(max(math.floor((n + 1) * d_lo), 1), n)
    k_hi = min(max(math.ceil((n + 1) * (1.0 - d_hi)), 1), n)
    return np.array([values[k_lo - 1], float(np.median(values)), values[k_hi - 1]])


@dataclass(frozen=True, slots=True, eq=False)
class HistogramQuantiles:
    """Stratified log1p-length quantiles: `table[model index, bin] = [lo, median, hi]`.

    Row `len(spec.models)` of the table serves unknown models. `edges` are the interior
    prompt-token bin edges (bin b holds edges[b-1] <= prompt_tokens < edges[b]).
    """

    spec: FeatureSpec
    edges: tuple[int, ...]
    table: FloatArray = field(repr=False)

    def __post_init__(self) -> None:
        shape = (len(self.spec.models) + 1, len(self.edges) + 1, 3)
        if self.table.shape != shape:
            raise ValueError(f"histogram table has shape {self.table.shape}, expected {shape}")
        if list(self.edges) != sorted(set(self.edges)):
            raise ValueError("histogram bin edges must be strictly increasing")
        if not np.all(np.isfinite(self.table)):
            raise ValueError("histogram table must be finite")

    def predict_log(self, batch: PromptBatch) -> FloatArray:
        """(n, 3) log1p quantiles [lo, median, hi] for each request."""
        bins = np.searchsorted(np.asarray(self.edges, dtype=np.int64), batch.prompt_tokens, "right")
        return self.table[self.spec.model_index(batch.models), bins]

    def to_json(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "table": self.table.tolist()}

    @classmethod
    def from_json(cls, spec: FeatureSpec, data: dict[str, Any]) -> HistogramQuantiles:
        edges = tuple(int(e) for e in data["edges"])
        return cls(spec, edges, np.asarray(data["table"], dtype=np.float64))


def _length_edges(prompt_tokens: IntArray, num_bins: int) -> tuple[int, ...]:
    cuts = np.quantile(prompt_tokens, np.arange(1, num_bins) / num_bins, method="higher")
    return tuple(sorted({int(c) for c in cuts if c > prompt_tokens.min()}))


def fit_histogram(
    spec: FeatureSpec,
    samples_prompt_tokens: IntArray,
    samples_models: tuple[str, ...],
    output_tokens: IntArray,
    *,
    d_lo: float,
    d_hi: float,
    num_bins: int = 5,
    min_stratum: int = 200,
) -> HistogramQuantiles:
    """Fit the stratified table on training rows (prompt-length quantile bins x model)."""
    log_y = np.log1p(output_tokens.astype(np.float64))
    edges = _length_edges(samples_prompt_tokens, num_bins)
    bins = np.searchsorted(np.asarray(edges, dtype=np.int64), samples_prompt_tokens, "right")
    models = spec.model_index(samples_models)

    def quantiles(mask: NDArray[np.bool_], parent: FloatArray) -> FloatArray:
        if int(mask.sum()) < min_stratum:
            return parent
        return order_stat_quantiles(log_y[mask], d_lo, d_hi)

    overall = order_stat_quantiles(log_y, d_lo, d_hi)
    per_bin = [quantiles(bins == b, overall) for b in range(len(edges) + 1)]
    table = np.empty((len(spec.models) + 1, len(edges) + 1, 3))
    table[len(spec.models)] = per_bin  # unknown model: the length bin over all models
    for m in range(len(spec.models)):
        in_model = models == m
        whole_model = quantiles(in_model, overall) if in_model.sum() >= min_stratum else None
        for b in range(len(edges) + 1):
            parent = per_bin[b] if whole_model is None else whole_model
            table[m, b] = quantiles(in_model & (bins == b), parent)
    return HistogramQuantiles(spec, edges, table)
