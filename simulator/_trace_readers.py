"""Text -> columns for the trace formats behind `simulator.traces.load_trace` (private).

Each reader checks every value and raises `predictors.jsonl.FormatError`, whose text is one line
`file:line: field 'name': problem` (lines 1-based as in an editor; a CSV header is line 1).
JSON lines are split and parsed by `predictors.jsonl`, the reader shared with the length data.
Invariant: returned columns are equal-length lists of valid values in file order; sorting and
building arrays is `traces.py`'s job.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Final, NamedTuple

from predictors import jsonl
from predictors.jsonl import Place

FORMATS: Final = ("azure", "mooncake", "vidur", "jsonl")
_MAX_TOKENS: Final = 10**12  # far above any real length; keeps every value inside int64
_TIME_EXAMPLE: Final = "2023-11-16 18:15:46.6805900"
_AZURE_TIME: Final = re.compile(
    r"(\d{4}-\d\d-\d\d)[ T](\d\d):(\d\d):(\d\d)(?:\.(\d{1,7}))?(Z|[+-]\d\d:\d\d)?"
)
JSON_KEYS: Final = {  # format -> keys whose presence in the first record identifies it
    "mooncake": frozenset({"input_length", "output_length"}),
    "jsonl": frozenset({"prompt_tokens", "output_tokens"}),
}


class CsvLayout(NamedTuple):
    """Column names of one CSV format."""

    arrival: str
    prompt: str
    output: str
    is_azure: bool  # arrival column holds required Azure timestamps, not optional seconds
    arrival_per_s: float  # raw arrival units per second


CSV_LAYOUTS: Final = {
    "azure": CsvLayout("TIMESTAMP", "ContextTokens", "GeneratedTokens", True, 1e7),
    "vidur": CsvLayout("arrived_at", "num_prefill_tokens", "num_decode_tokens", False, 1.0),
}


@dataclass(slots=True)
class RawColumns:
    """Values as read, in file order; ``arrival_per_s`` converts raw arrivals to seconds.

    ``arrival`` holds Azure timestamps as integer 100 ns ticks (exact), other formats as floats.
    """

    arrival: list[float] | None
    arrival_per_s: float
    prompt_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    lo: list[int] | None = None
    hi: list[int] | None = None
    prompts: list[str] | None = None
    models: list[str] | None = None


def _show(value: object) -> str:
    shown = repr(value) if isinstance(value, str) else json.dumps(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."


def read_text(path: Path, source: str) -> str:
    """The file as text (`predictors.jsonl.read_text`); raises FormatError if it is blank."""
    text = jsonl.read_text(path)
    if not text.strip():
        Place(source, 1).fail(None, "empty file; expected a header or one record per line")
    return text


def _count(value: object, at: Place, field: str) -> int:
    """A token count >= 1: an int, or an integral float/string (pandas may write '374.0')."""
    number: object = value
    if isinstance(value, str):
        try:
            number = int(value)  # int() ignores surrounding whitespace
        except ValueError:
            number = _float_or_none(value)
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if type(number) is not int or number < 1:  # type() check also rejects JSON true/false
        at.fail(field, f"expected a positive integer, got {_show(value)}")
    if number > _MAX_TOKENS:
        at.fail(field, f"expected at most {_MAX_TOKENS}, got {_show(value)}")
    return number


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _time(value: object, at: Place, field: str, unit: str) -> float:
    number: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        number = _float_or_none(value)
    if number is None or not math.isfinite(number):
        at.fail(field, f"expected a number of {unit}, got {_show(value)}")
    return number


def _seconds(value: object, at: Place, field: str) -> float:
    return _time(value, at, field, "seconds")


@functools.lru_cache(maxsize=64)
def _day_ticks(iso_date: str) -> int:
    """100 ns ticks from 0001-01-01 to ``iso_date``; ValueError for an impossible date."""
    return date.fromisoformat(iso_date).toordinal() * 86400 * 10**7


def _azure_ticks(value: str, at: Place, field: str) -> int:
    """Azure TIMESTAMP -> integer 100 ns ticks since 0001-01-01 (exact, fits int64)."""
    match = _AZURE_TIME.fullmatch(value.strip())
    try:
        if match is None:
            raise ValueError(value)
        day, hour, minute, second, fraction, zone = match.groups()
        if int(hour) > 23 or int(minute) > 59 or int(second) > 59:
            raise ValueError(value)
        seconds = int(hour) * 3600 + int(minute) * 60 + int(second)
        if zone not in (None, "Z"):  # +hh:mm means local time is ahead of UTC
            sign = -1 if zone[0] == "-" else 1
            seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
        return _day_ticks(day) + seconds * 10**7 + int((fraction or "").ljust(7, "0"))
    except ValueError:
        at.fail(field, f"expected a timestamp like {_TIME_EXAMPLE!r}, got {_show(value)}")


def read_csv(text: str, source: str, layout: CsvLayout) -> RawColumns:
    """Azure or Vidur CSV: the first non-blank line is the header; blank lines are skipped."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = ((reader.line_num, row) for row in reader if any(value.strip() for value in row))
    try:
        header_line, header = next(rows, (1, []))
        index: dict[str, int] = {}
        for i, name in enumerate(header):
            index.setdefault(name.strip(), i)
        for name in (layout.arrival, layout.prompt, layout.output):
            if name not in index and (name != layout.arrival or layout.is_azure):
                message = f"missing column; the header has {','.join(header)!r}"
                Place(source, header_line).fail(name, message)
        columns = RawColumns([] if layout.arrival in index else None, layout.arrival_per_s)
        for line, row in rows:
            _csv_row(row, len(header), index, columns, Place(source, line), layout)
    except csv.Error as error:
        Place(source, reader.line_num).fail(None, f"malformed CSV: {error}")
    if not columns.prompt_tokens:
        Place(source, header_line).fail(None, "no requests after the header")
    return columns


def _csv_row(
    row: list[str],
    num_columns: int,
    index: dict[str, int],
    columns: RawColumns,
    at: Place,
    layout: CsvLayout,
) -> None:
    if len(row) != num_columns:
        missing = [name for name, i in index.items() if i >= len(row)]
        message = f"row has {len(row)} values but the header has {num_columns} columns"
        at.fail(missing[0] if missing else None, message)
    if columns.arrival is not None:
        raw = row[index[layout.arrival]]
        parse = _azure_ticks if layout.is_azure else _seconds
        columns.arrival.append(parse(raw, at, layout.arrival))
    columns.prompt_tokens.append(_count(row[index[layout.prompt]], at, layout.prompt))
    columns.output_tokens.append(_count(row[index[layout.output]], at, layout.output))


def read_jsonl(text: str, source: str, *, is_mooncake: bool) -> RawColumns:
    """Mooncake or canonical JSONL: one JSON object per non-blank line."""
    columns = RawColumns([] if is_mooncake else None, 1000.0 if is_mooncake else 1.0)
    first_seen: dict[str, tuple[bool, int | None]] = {}
    for at, record in jsonl.jsonl_records(text, source):
        if is_mooncake:
            _mooncake_record(record, columns, at)
        else:
            _check_optional_keys(record, first_seen, at)
            _canonical_record(record, columns, at)
    return columns


def _require(record: dict[str, Any], keys: tuple[str, ...], at: Place) -> None:
    for key in keys:
        if key not in record:
            at.fail(key, f"missing key; the record has {sorted(record)}")


def _mooncake_record(record: dict[str, Any], columns: RawColumns, at: Place) -> None:
    _require(record, ("timestamp", "input_length", "output_length"), at)
    assert columns.arrival is not None
    columns.arrival.append(_time(record["timestamp"], at, "timestamp", "milliseconds"))
    columns.prompt_tokens.append(_count(record["input_length"], at, "input_length"))
    columns.output_tokens.append(_count(record["output_length"], at, "output_length"))


def _check_optional_keys(
    record: dict[str, Any], first_seen: dict[str, tuple[bool, int | None]], at: Place
) -> None:
    """Canonical JSONL: each optional key (lo+hi as a pair) is on every record or on none."""
    if ("lo" in record) != ("hi" in record):
        at.fail("hi" if "lo" in record else "lo", "missing key; 'lo' and 'hi' go together")
    for key in ("arrival_s", "lo", "prompt", "model"):
        present = key in record
        seen, seen_line = first_seen.setdefault(key, (present, at.line))
        if present != seen:
            where = "given here but missing" if present else "missing here but given"
            at.fail(key, f"{where} on line {seen_line}; give it on every record or on none")


def _canonical_record(record: dict[str, Any], columns: RawColumns, at: Place) -> None:
    _require(record, ("prompt_tokens", "output_tokens"), at)
    if not columns.prompt_tokens:  # the first record decides which optional columns exist
        columns.arrival = [] if "arrival_s" in record else None
        columns.lo, columns.hi = ([], []) if "lo" in record else (None, None)
        columns.prompts = [] if "prompt" in record else None
        columns.models = [] if "model" in record else None
    if columns.arrival is not None:
        columns.arrival.append(_seconds(record["arrival_s"], at, "arrival_s"))
    columns.prompt_tokens.append(_count(record["prompt_tokens"], at, "prompt_tokens"))
    columns.output_tokens.append(_count(record["output_tokens"], at, "output_tokens"))
    if columns.lo is not None and columns.hi is not None:
        lo, hi = _count(record["lo"], at, "lo"), _count(record["hi"], at, "hi")
        if hi < lo:
            at.fail("hi", f"expected hi >= lo ({lo}), got {hi}")
        columns.lo.append(lo)
        columns.hi.append(hi)
    if columns.prompts is not None:
        if not isinstance(record["prompt"], str):
            at.fail("prompt", f"expected a string, got {_show(record['prompt'])}")
        columns.prompts.append(record["prompt"])
    if columns.models is not None:
        if not isinstance(record["model"], str):
            at.fail("model", f"expected a string, got {_show(record['model'])}")
        columns.models.append(record["model"])
