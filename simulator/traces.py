"""Request traces for replay: the `Trace` columns and `load_trace` for four file formats.

Reads the Azure 2023 CSV, Mooncake JSONL, Vidur CSV and our canonical JSONL (docs/architecture.md,
"A trace through `kvsched simulate`"). Invariant: a `Trace` is sorted by arrival
with the first arrival at 0.0 (or all NaN for a lengths-only file), and a malformed file raises
`predictors.jsonl.FormatError`, whose text is one line `file:line: field 'name': problem`.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from predictors.jsonl import FormatError, Place, json_object
from simulator._trace_readers import (
    CSV_LAYOUTS,
    FORMATS,
    JSON_KEYS,
    RawColumns,
    read_csv,
    read_jsonl,
    read_text,
)

__all__ = ["FORMATS", "Trace", "detect_format", "load_trace"]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
_ARRAY_FIELDS = ("arrival_s", "prompt_tokens", "output_tokens", "lo", "hi")


@dataclass(frozen=True, slots=True, eq=False)
class Trace:
    """A replayable workload: equal-length column arrays, one entry per request.

    Attributes:
        arrival_s: float64 seconds since the first request; sorted, ``arrival_s[0] == 0.0``.
            All NaN when the file has no arrival times (then ``has_arrivals`` is False).
        prompt_tokens: int64 prompt lengths, each >= 1 (an empty prompt cannot be prefilled).
        output_tokens: int64 true output lengths, each >= 1. Only the simulator's executor
            may read them; policies see ``lo``/``hi`` at most.
        source: the path the trace was read from.
        format: the reader that produced it, one of ``FORMATS``.
        lo, hi: optional int64 predicted output-length bounds, 1 <= lo <= hi (both or neither).
        prompts: optional prompt texts, one per request.
        models: optional target model per request (a feature of learned predictors).

    Arrays are stored as read-only copies. ``==`` compares contents (NaN equals NaN).
    """

    arrival_s: FloatArray
    prompt_tokens: IntArray
    output_tokens: IntArray
    source: str
    format: str
    lo: IntArray | None = None
    hi: IntArray | None = None
    prompts: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        n = _check_column("prompt_tokens", self.prompt_tokens, np.int64, None)
        if n == 0:
            raise ValueError("a trace needs at least one request")
        _check_column("output_tokens", self.output_tokens, np.int64, n)
        _check_column("arrival_s", self.arrival_s, np.float64, n)
        _check_arrivals(self.arrival_s)
        _check_at_least("prompt_tokens", self.prompt_tokens, 1)
        _check_at_least("output_tokens", self.output_tokens, 1)
        if (self.lo is None) != (self.hi is None):
            raise ValueError("lo and hi must be given together or not at all")
        if self.lo is not None and self.hi is not None:
            _check_column("lo", self.lo, np.int64, n)
            _check_column("hi", self.hi, np.int64, n)
            _check_at_least("lo", self.lo, 1)
            bad = np.flatnonzero(self.lo > self.hi)
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"request {i}: lo ({self.lo[i]}) > hi ({self.hi[i]})")
        if self.prompts is not None and len(self.prompts) != n:
            raise ValueError(f"prompts has {len(self.prompts)} entries, expected {n}")
        if self.models is not None and len(self.models) != n:
            raise ValueError(f"models has {len(self.models)} entries, expected {n}")
        for name in _ARRAY_FIELDS:  # private read-only copies keep the trace immutable
            array = getattr(self, name)
            if array is not None:
                array = array.copy()
                array.flags.writeable = False
                object.__setattr__(self, name, array)

    def __len__(self) -> int:
        return int(self.prompt_tokens.size)

    @property
    def has_arrivals(self) -> bool:
        """False for a lengths-only trace (all ``arrival_s`` NaN)."""
        return not math.isnan(self.arrival_s[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        mine = (self.source, self.format, self.prompts, self.models)
        if mine != (other.source, other.format, other.prompts, other.models):
            return False
        return all(_same_array(getattr(self, n), getattr(other, n)) for n in _ARRAY_FIELDS)


def _check_column(name: str, array: object, dtype: type, n: int | None) -> int:
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D numpy array of {np.dtype(dtype).name}")
    if n is not None and array.size != n:
        raise ValueError(f"{name} has {array.size} entries, expected {n}")
    return int(array.size)


def _check_at_least(name: str, array: IntArray, minimum: int) -> None:
    bad = np.flatnonzero(array < minimum)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name}[{i}] = {array[i]}, expected >= {minimum}")


def _check_arrivals(arrival_s: FloatArray) -> None:
    missing = np.isnan(arrival_s)
    if missing.all():
        return
    if missing.any() or not np.isfinite(arrival_s).all():
        raise ValueError("arrival_s must be all finite, or all NaN for a lengths-only trace")
    if arrival_s[0] != 0.0 or np.any(np.diff(arrival_s) < 0.0):
        raise ValueError("arrival_s must start at 0.0 and be non-decreasing")


def _same_array(a: npt.NDArray[Any] | None, b: npt.NDArray[Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")


def load_trace(path: str | Path, fmt: str | None = None) -> Trace:
    """Read a trace file; ``fmt`` is one of ``FORMATS``, or None to detect it.

    Formats (extra columns/keys are ignored everywhere):
      * ``azure``: CSV ``TIMESTAMP`` (e.g. ``2023-11-16 18:15:46.6805900``, 100 ns resolution,
        optional ``Z``/``+hh:mm``), ``ContextTokens``, ``GeneratedTokens``.
      * ``mooncake``: JSONL ``timestamp`` (ms), ``input_length``, ``output_length``.
      * ``vidur``: CSV ``arrived_at`` (s, optional column), ``num_prefill_tokens``,
        ``num_decode_tokens``.
      * ``jsonl``: ``arrival_s`` (s), ``prompt_tokens``, ``output_tokens``, optional ``prompt``,
        ``model``,
        ``lo`` + ``hi``. Each optional key must be on every record or on none.
    Rows are stably sorted by arrival time when the file is not (the Azure files already are),
    and arrivals are shifted so the earliest is 0.0. Detection uses the extension (.csv,
    .jsonl/.json/.ndjson; otherwise the first character) and the header or first record.

    Raises:
        predictors.jsonl.FormatError: malformed or unrecognised content, or a .gz that does
            not decompress (one line: file, line, field).
        OSError: the file cannot be opened.
    """
    source = str(path)
    text = read_text(Path(path), source)
    if fmt is None:
        fmt = _detect(text, source, Path(path).suffix.lower())
    elif fmt not in FORMATS:
        expected = ", ".join(FORMATS)
        raise FormatError(source, None, f"unknown format {fmt!r}; expected one of {expected}")
    if fmt in CSV_LAYOUTS:
        columns = read_csv(text, source, CSV_LAYOUTS[fmt])
    else:
        columns = read_jsonl(text, source, is_mooncake=fmt == "mooncake")
    return _to_trace(columns, source, fmt)


def detect_format(path: str | Path) -> str:
    """The format ``load_trace(path)`` would use; raises FormatError if none matches."""
    source = str(path)
    return _detect(read_text(Path(path), source), source, Path(path).suffix.lower())


def _detect(text: str, source: str, suffix: str) -> str:
    line, first = next((i, s) for i, s in enumerate(text.split("\n"), 1) if s.strip())
    at = Place(source, line)
    if suffix in (".jsonl", ".json", ".ndjson") or (
        suffix != ".csv" and first.lstrip().startswith("{")
    ):
        keys = json_object(first, at).keys()
        for fmt, needed in JSON_KEYS.items():
            if needed <= keys:
                return fmt
        wanted = " or ".join(f"{'+'.join(sorted(k))} ({f})" for f, k in JSON_KEYS.items())
        at.fail(None, f"unknown format: first record has keys {sorted(keys)}; expected {wanted}")
    try:
        header = {name.strip() for name in next(csv.reader([first]))}
    except csv.Error as error:
        at.fail(None, f"malformed CSV header: {error}")
    for fmt, layout in CSV_LAYOUTS.items():
        if {layout.prompt, layout.output} <= header:
            return fmt
    wanted = " or ".join(f"{','.join(layout[:3])} ({f})" for f, layout in CSV_LAYOUTS.items())
    at.fail(None, f"unknown format: header {first.strip()!r}; expected {wanted}")


def _to_trace(columns: RawColumns, source: str, fmt: str) -> Trace:
    """Stable-sort by arrival, shift the first arrival to 0.0, and build the arrays."""
    n = len(columns.prompt_tokens)
    order = np.arange(n)
    arrival_s = np.full(n, np.nan)
    if columns.arrival is not None:
        raw = np.asarray(columns.arrival)  # int64 for Azure ticks, so the shift is exact
        order = np.argsort(raw, kind="stable")
        raw = raw[order]
        arrival_s = ((raw - raw[0]) / columns.arrival_per_s).astype(np.float64)

    def column(values: list[int] | None) -> IntArray | None:
        return None if values is None else np.asarray(values, dtype=np.int64)[order]

    prompt, output = column(columns.prompt_tokens), column(columns.output_tokens)
    assert prompt is not None and output is not None
    prompts = None if columns.prompts is None else tuple(columns.prompts[i] for i in order)
    models = None if columns.models is None else tuple(columns.models[i] for i in order)
    lo, hi = column(columns.lo), column(columns.hi)
    return Trace(arrival_s, prompt, output, source, fmt, lo, hi, prompts, models)
