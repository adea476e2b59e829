"""Shared pieces of the length-data readers (docs/predictors.md): the format error, checked field
access and the row buffer every reader fills.

Invariant: any bad input surfaces as one `DatasetFormatError` line naming the file, the place
(``line N`` for JSONL, ``record N`` for a JSON list, both 1-based) and the field; readers never
let a KeyError or TypeError escape.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

_SHOWN_CHARS = 40


class DatasetFormatError(ValueError):
    """A length-data file that does not match its layout; the message is one line."""

    def __init__(self, path: str | Path, where: str, field_name: str, problem: str) -> None:
        self.path = str(path)
        self.where = where
        self.field_name = field_name
        parts = [self.path, where, f"field {field_name!r}" if field_name else "", problem]
        super().__init__(": ".join(p for p in parts if p))


@dataclass(frozen=True, slots=True)
class Where:
    """A place in a file, for error messages: ``Where("a.jsonl", "line 3")``."""

    path: str
    loc: str = ""

    def error(self, field_name: str, problem: str) -> DatasetFormatError:
        return DatasetFormatError(self.path, self.loc, field_name, problem)


def shown(value: object) -> str:
    """A short one-line repr of a bad value."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def get_str(rec: Mapping[str, object], key: str, at: Where, default: str | None = None) -> str:
    """rec[key] as a string; a missing or null field gives `default` (an error when None)."""
    value = rec.get(key)
    if value is None:
        if default is None:
            raise at.error(key, "missing")
        return default
    if not isinstance(value, str):
        raise at.error(key, f"expected a string, got {shown(value)}")
    return value


def get_count(rec: Mapping[str, object], key: str, at: Where) -> int | None:
    """rec[key] as an integer >= 0, or None when missing or null."""
    value = rec.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise at.error(key, f"expected an integer >= 0, got {shown(value)}")
    return value


def prompt_id_of(prompt: str) -> str:
    """The default prompt id: the first 16 hex digits of the SHA-256 of the UTF-8 prompt."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def read_text(path: Path) -> str:
    """The whole file as UTF-8 text (gunzipped when the name ends in .gz)."""
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8") as handle:
                return handle.read()
        return path.read_text(encoding="utf-8")
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise Where(str(path)).error("", f"cannot read: {exc}") from None


def iter_jsonl(path: Path) -> Iterator[tuple[Where, dict[str, object]]]:
    """(place, object) for each non-blank line of a JSONL file; anything else is an error."""
    # split on "\n" only: str.splitlines would also break inside strings at U+2028, \x85, ...
    for number, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        at = Where(str(path), f"line {number}")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise at.error("", f"invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(record, dict):
            raise at.error("", f"expected a JSON object, got {shown(record)}")
        yield at, record


@dataclass(slots=True)
class RowBuffer:
    """Rows as readers find them; -1 token counts mean "count the text with the tokenizer"."""

    prompts: list[str] = field(default_factory=list)
    prompt_ids: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def add(
        self,
        prompt: str,
        prompt_id: str,
        model: str,
        source: str,
        *,
        prompt_tokens: int | None,
        output_tokens: int | None,
        output: str = "",
    ) -> None:
        self.prompts.append(prompt)
        self.prompt_ids.append(prompt_id)
        self.models.append(model)
        self.sources.append(source)
        self.prompt_tokens.append(-1 if prompt_tokens is None else prompt_tokens)
        self.output_tokens.append(-1 if output_tokens is None else output_tokens)
        self.outputs.append(output)

    def __len__(self) -> int:
        return len(self.prompts)
