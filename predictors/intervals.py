"""Synthetic prediction intervals for simulation (docs/algorithms.md, "Intervals for simulation").

Pure functions over arrays, independent of the learned-predictor interface. Invariant: the
returned (lo, hi) are int64 with 1 <= lo <= hi, and without ``miss`` noise every family except
``given`` contains the true length (lo <= o <= hi). Spec strings, as typed on a CLI:
``exact``, ``given``, ``global``, ``bins``, ``alpha=X``, each optionally followed by ``,miss=P``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import numpy as np
import numpy.typing as npt

Int64Array = npt.NDArray[np.int64]
BIN_EDGES_START: Final = (1, 50, 100)  # then doubling: 200, 400, 800, 1600, ...


class IntervalFamily(StrEnum):
    """How intervals are built from the true output lengths."""

    EXACT = "exact"  # lo = hi = o
    GIVEN = "given"  # the trace's own lo/hi columns
    GLOBAL = "global"  # family 1: [min o, max o] for everyone
    BINS = "bins"  # family 2: the length bin holding o
    ALPHA = "alpha"  # family 3: controlled lo/hi ratio


@dataclass(frozen=True, slots=True)
class IntervalSpec:
    """Parsed interval spec: a family, its alpha (family 3 only), and the miss fraction."""

    family: IntervalFamily
    alpha: float | None = None
    miss: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.family, IntervalFamily):
            raise ValueError(f"family must be an IntervalFamily, got {self.family!r}")
        if self.family is IntervalFamily.ALPHA:
            if self.alpha is None or not 0.0 < self.alpha <= 1.0:
                raise ValueError(f"alpha must satisfy 0 < alpha <= 1, got {self.alpha!r}")
        elif self.alpha is not None:
            raise ValueError(f"alpha applies only to the alpha family, not {self.family.value}")
        if not 0.0 <= self.miss < 1.0:  # also rejects NaN
            raise ValueError(f"miss must satisfy 0 <= miss < 1, got {self.miss!r}")


_FAMILY_NAMES: Final = frozenset(family.value for family in IntervalFamily)
_SYNTAX_HELP: Final = (
    "expected one of exact, given, global, bins, alpha=X (0 < X <= 1), "
    "optionally followed by ',miss=P' (0 <= P < 1), e.g. 'alpha=0.5,miss=0.1'"
)


def _parse_number(key: str, text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"interval spec {spec!r}: {key}={text!r} is not a number") from None


def parse_interval_spec(spec: str) -> IntervalSpec:
    """Parse and validate a CLI interval spec such as ``alpha=0.5,miss=0.1``.

    Raises ValueError naming the problem: unknown family, alpha out of range, miss not in
    [0, 1), a repeated or missing family, or bad syntax.
    """
    family: IntervalFamily | None = None
    alpha: float | None = None
    miss: float | None = None
    parts = [part.strip() for part in spec.strip().lower().split(",")]
    for part in parts:
        key, sep, value = (piece.strip() for piece in part.partition("="))
        if key == "miss":
            if not sep:
                raise ValueError(f"interval spec {spec!r}: bad syntax in {part!r}; " + _SYNTAX_HELP)
            if miss is not None:
                raise ValueError(f"interval spec {spec!r}: miss given twice")
            miss = _parse_number("miss", value, spec)
            continue
        if key not in _FAMILY_NAMES:
            raise ValueError(
                f"interval spec {spec!r}: unknown family or option {part!r}; " + _SYNTAX_HELP
            )
        if family is not None:
            raise ValueError(f"interval spec {spec!r}: more than one family; " + _SYNTAX_HELP)
        family = IntervalFamily(key)
        if (family is IntervalFamily.ALPHA) != bool(sep):
            raise ValueError(f"interval spec {spec!r}: bad syntax in {part!r}; " + _SYNTAX_HELP)
        if sep:
            alpha = _parse_number("alpha", value, spec)
    if family is None:
        raise ValueError(f"interval spec {spec!r}: no family given; " + _SYNTAX_HELP)
    try:
        return IntervalSpec(family, alpha, 0.0 if miss is None else miss)
    except ValueError as exc:
        raise ValueError(f"interval spec {spec!r}: {exc}") from None


def make_intervals(
    spec: str,
    output_tokens: npt.NDArray[np.integer[Any]],
    *,
    seed: int,
    given: tuple[npt.NDArray[np.integer[Any]], npt.NDArray[np.integer[Any]]] | None = None,
) -> tuple[Int64Array, Int64Array]:
    """Build per-request length intervals (lo, hi) for the true output lengths ``output_tokens``.

    Same ``spec``, data and ``seed`` give the same arrays. ``given`` is the trace's own (lo, hi),
    needed only by the ``given`` family. With ``miss=P`` exactly round(P * n) requests, chosen by
    the seeded generator, get an interval that excludes their true length (see _apply_misses).
    """
    parsed = parse_interval_spec(spec)
    lengths = _validate_lengths(output_tokens)
    rng = np.random.default_rng(seed)
    lo, hi = _family_intervals(parsed, lengths, rng, given)
    if parsed.miss > 0.0:
        lo, hi = _apply_misses(lo, hi, lengths, parsed.miss, rng)
    assert lo.shape == hi.shape == lengths.shape and bool(np.all((lo >= 1) & (lo <= hi)))
    return lo, hi


def _validate_lengths(output_tokens: npt.NDArray[np.integer[Any]]) -> Int64Array:
    array = np.asarray(output_tokens)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"output_tokens must be a 1-D integer array, got {array.dtype} {array.shape}"
        )
    if array.size and int(array.min()) < 1:
        raise ValueError("output_tokens must all be >= 1")
    return array.astype(np.int64)


def _family_intervals(
    parsed: IntervalSpec,
    lengths: Int64Array,
    rng: np.random.Generator,
    given: tuple[npt.NDArray[np.integer[Any]], npt.NDArray[np.integer[Any]]] | None,
) -> tuple[Int64Array, Int64Array]:
    family = parsed.family
    if family is IntervalFamily.EXACT:
        return lengths.copy(), lengths.copy()
    if family is IntervalFamily.GIVEN:
        return _given_intervals(given, lengths.shape)
    if family is IntervalFamily.GLOBAL:
        if lengths.size == 0:
            return lengths.copy(), lengths.copy()
        return np.full_like(lengths, lengths.min()), np.full_like(lengths, lengths.max())
    if family is IntervalFamily.BINS:
        return bin_intervals(lengths)
    assert parsed.alpha is not None
    return alpha_intervals(lengths, parsed.alpha, rng)


def _given_intervals(
    given: tuple[npt.NDArray[np.integer[Any]], npt.NDArray[np.integer[Any]]] | None,
    shape: tuple[int, ...],
) -> tuple[Int64Array, Int64Array]:
    if given is None:
        raise ValueError("interval spec 'given': the trace has no lo/hi columns")
    lo, hi = (np.asarray(column) for column in given)
    if lo.shape != shape or hi.shape != shape:
        raise ValueError(f"given lo/hi must have shape {shape}, got {lo.shape} and {hi.shape}")
    if not (np.issubdtype(lo.dtype, np.integer) and np.issubdtype(hi.dtype, np.integer)):
        raise ValueError(f"given lo/hi must be integer arrays, got {lo.dtype} and {hi.dtype}")
    if lo.size and not bool(np.all((lo >= 1) & (lo <= hi))):
        raise ValueError("given lo/hi must satisfy 1 <= lo <= hi for every request")
    return lo.astype(np.int64), hi.astype(np.int64)


def bin_edges(max_tokens: int) -> Int64Array:
    """Edges 1, 50, 100, 200, 400, ... (doubling) up to the first edge above ``max_tokens``."""
    edges = list(BIN_EDGES_START)
    while edges[-1] <= max_tokens:
        edges.append(edges[-1] * 2)
    return np.asarray(edges, dtype=np.int64)


def bin_intervals(lengths: Int64Array) -> tuple[Int64Array, Int64Array]:
    """Family 2: each request gets the bin [edge_k, edge_{k+1} - 1] that holds its length."""
    edges = bin_edges(int(lengths.max()) if lengths.size else 1)
    index = np.searchsorted(edges, lengths, side="right") - 1
    return edges[index], edges[index + 1] - 1


def alpha_intervals(
    lengths: Int64Array, alpha: float, rng: np.random.Generator
) -> tuple[Int64Array, Int64Array]:
    """Family 3: rho ~ U[alpha, 1], hi = ceil(o / rho), lo = max(1, floor(alpha * hi)).

    In exact arithmetic hi >= o and alpha * hi < o + alpha <= o + 1, so lo <= o <= hi. The
    clamps to o are cheap guards against floating-point rounding (an exhaustive check for
    o < 2e6 and alpha within 200 ulps of 1 never needed them).
    """
    rho = rng.uniform(alpha, 1.0, size=lengths.shape)
    hi = np.maximum(np.ceil(lengths / rho).astype(np.int64), lengths)
    lo = np.floor(alpha * hi).astype(np.int64)
    lo = np.clip(lo, 1, lengths)
    return lo, hi


def _apply_misses(
    lo: Int64Array, hi: Int64Array, lengths: Int64Array, miss: float, rng: np.random.Generator
) -> tuple[Int64Array, Int64Array]:
    """Move exactly round(miss * n) random intervals so they exclude the true length.

    Width hi - lo is kept. Half of the chosen requests (floor, picked at random) go below:
    hi = o - 1, lo = max(1, o - 1 - width), so the width shrinks only where it would cross 1. The
    rest, and any chosen request with o == 1, go above: lo = o + 1, hi = o + 1 + width.
    """
    num_miss = round(miss * lengths.size)
    chosen = rng.choice(lengths.size, size=num_miss, replace=False)
    below = np.zeros(num_miss, dtype=bool)
    below[rng.permutation(num_miss)[: num_miss // 2]] = True
    below &= lengths[chosen] > 1
    width = hi[chosen] - lo[chosen]
    o = lengths[chosen]
    lo, hi = lo.copy(), hi.copy()
    lo[chosen] = np.where(below, np.maximum(1, o - 1 - width), o + 1)
    hi[chosen] = np.where(below, o - 1, o + 1 + width)
    return lo, hi
