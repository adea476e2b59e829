"""Shared pieces of the length-data readers (docs/predictors.md): checked field access and the
row buffer every reader fills.

Invariant: any bad input surfaces as one `predictors.jsonl.FormatError` line naming the file, the
place (``file:N`` for line N of JSONL, ``file: record N`` for a JSON list, both 1-based) and the
field; readers never let a KeyError or TypeError escape.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from predictors.jsonl import Place

_SHOWN_CHARS = 40


def shown(value: object) -> str:
    """A short one-line repr of a bad value."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def get_str(rec: Mapping[str, object], key: str, at: Place, default: str | None = None) -> str:
    """rec[key] as a string; a missing or null field gives `default` (an error when None)."""
    value = rec.get(key)
    if value is None:
        if default is None:
            raise at.error(key, "missing")
        return default
    if not isinstance(value, str):
        raise at.error(key, f"expected a string, got {shown(value)}")
    return value


def get_count(rec: Mapping[str, object], key: str, at: Place) -> int | None:
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
