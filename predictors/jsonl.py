"""The one reader of JSON-lines files and the one format error of every data-file reader.

JSON lines (one JSON object per non-blank line) is the canonical trace and completion-log format
(docs/traces.md): `simulator.traces.load_trace` and `predictors.datasets.load_samples` both read
it through `read_text` and `jsonl_records` here, and every reader of a data file reports bad
input as a `FormatError`.

Invariants: a `FormatError`'s text is one line ``path:line: field 'name': problem`` (line
1-based as in an editor; ``path: record N: ...`` for the N-th element of a JSON list; the line,
record and field parts are left out when unknown); lines are split on "\\n" only, so a JSON
string holding U+2028, \\x85 and the like stays on its line; a name ending in ``.gz`` is
gunzipped first.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn


class FormatError(ValueError):
    """A data file that does not match its format; ``str()`` is one line.

    ``path:line: field 'f': problem``, or ``path: record N: ...`` for an element of a JSON list.
    ``line``, ``record`` and ``field`` are None when the problem is not tied to one.
    """

    def __init__(
        self,
        path: str | Path,
        line: int | None,
        problem: str,
        field: str | None = None,
        *,
        record: int | None = None,
    ) -> None:
        self.path = str(path)
        self.line = line
        self.problem = problem
        self.field = field
        self.record = record
        where = self.path if line is None else f"{self.path}:{line}"
        if record is not None:
            where += f": record {record}"
        what = problem if field is None else f"field {field!r}: {problem}"
        super().__init__(" ".join(f"{where}: {what}".split()))  # always one line

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (self.path, self.line, self.problem, self.field, self.record))


def _rebuild(
    path: str, line: int | None, problem: str, field: str | None, record: int | None
) -> FormatError:
    """Unpickle a `FormatError` (the keyword-only ``record`` needs a helper)."""
    return FormatError(path, line, problem, field, record=record)


@dataclass(frozen=True, slots=True)
class Place:
    """Where a value came from (a file, and a line or a JSON-list record), to report errors."""

    path: str
    line: int | None = None
    record: int | None = None

    def error(self, field: str | None, problem: str) -> FormatError:
        """The error for `field` (None: the whole line or file) at this place."""
        return FormatError(self.path, self.line, problem, field, record=self.record)

    def fail(self, field: str | None, problem: str) -> NoReturn:
        """Raise `error(field, problem)`."""
        raise self.error(field, problem)


def read_text(path: Path) -> str:
    """The whole file as UTF-8 text (a leading BOM dropped; gunzipped when the name ends .gz).

    Raises OSError when the file cannot be opened, and `FormatError` when its content cannot be
    decompressed ("cannot read: ...") or is not UTF-8 (with the line of the first bad byte).
    """
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise FormatError(path, None, f"cannot read: {exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise FormatError(path, line, "not UTF-8 text") from None


def json_object(raw: str, at: Place) -> dict[str, Any]:
    """One JSON-lines line, which must hold a JSON object; anything else fails at `at`."""
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as exc:
        at.fail(None, f"invalid JSON: {exc.msg} at column {exc.colno}")
    except (ValueError, RecursionError) as exc:  # e.g. an integer with > 4300 digits
        at.fail(None, f"invalid JSON: {exc}")
    if not isinstance(record, dict):
        at.fail(None, f"expected a JSON object, got {type(record).__name__}")
    return record


def jsonl_records(text: str, path: str | Path) -> Iterator[tuple[Place, dict[str, Any]]]:
    """(place, object) for each non-blank line of JSON-lines `text` read from `path`, in order."""
    # split on "\n" only: str.splitlines would also break inside strings at U+2028, \x85, ...
    for number, raw in enumerate(text.split("\n"), start=1):
        if raw.strip():
            at = Place(str(path), number)
            yield at, json_object(raw, at)


def read_jsonl(path: Path) -> Iterator[tuple[Place, dict[str, Any]]]:
    """`jsonl_records` of the file at `path` (see `read_text` for what it raises)."""
    return jsonl_records(read_text(path), path)
