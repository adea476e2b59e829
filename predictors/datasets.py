"""Length data for training and evaluation (docs/predictors.md): any supported layout -> rows.

`load_samples(path)` detects the layout: an AlpacaEval ``model_outputs`` JSON file or folder of
them, an Arena-Hard folder (``question.jsonl`` + ``model_answer/*.jsonl``), or canonical JSONL
(a ``.jsonl`` / ``.jsonl.gz`` file or a folder of them). Texts are counted with the Llama-3
tokenizer (`predictors.tokenizer`). Invariant: every returned row has output_tokens >= 1; rows
whose output has 0 tokens are dropped and counted in `LoadReport.num_dropped_empty`.

The canonical JSONL is also the service's completion log (`kvsched serve --completion-log`),
one object per finished request:
    {"prompt": str, "prompt_tokens": int, "model": str, "output_tokens": int, "ts": float,
     "lo": int, "hi": int, "max_tokens": int, "finish_reason": "stop" | "length"}
Required: ``prompt`` and ``output_tokens`` (int >= 0; or ``output``, a text that is counted).
Optional: ``model`` (target model, default ""), ``prompt_tokens`` (default: counted),
``prompt_id`` (default: the first 16 hex digits of SHA-256 of the prompt), ``source`` (default
"jsonl"). ``ts`` (arrival, Unix seconds) and any other field are ignored; null means absent.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import numpy as np

from predictors.base import IntArray, LengthSamples
from predictors.dataset_layouts import read_alpaca_eval, read_arena_hard, read_canonical
from predictors.dataset_rows import RowBuffer, prompt_id_of
from predictors.jsonl import Place
from predictors.tokenizer import count_tokens

__all__ = [
    "LoadReport",
    "concat_samples",
    "detect_layout",
    "load_samples",
    "prompt_id_of",
    "read_samples",
    "write_samples",
]

Layout = Literal["alpaca_eval", "arena_hard", "jsonl"]
JSONL_SUFFIXES: Final = (".jsonl", ".jsonl.gz")
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoadReport:
    """What `read_samples` found: the rows, the layout, the files read and the rows dropped."""

    samples: LengthSamples
    layout: Layout
    files: tuple[str, ...]
    num_dropped_empty: int

    def __post_init__(self) -> None:
        if self.num_dropped_empty < 0:
            raise ValueError("num_dropped_empty must be >= 0")

    @property
    def num_rows_read(self) -> int:
        return len(self.samples) + self.num_dropped_empty


def _jsonl_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(JSONL_SUFFIXES))


def detect_layout(path: str | Path) -> tuple[Layout, list[Path]]:
    """The layout of `path` and the files (or, for Arena-Hard, the folder) its reader takes."""
    path = Path(path)
    if path.is_dir():
        if (path / "question.jsonl").is_file():
            return "arena_hard", [path]
        json_files = sorted(path.glob("*.json"))
        if json_files:
            return "alpaca_eval", json_files
        if jsonl_files := _jsonl_files(path):
            return "jsonl", jsonl_files
        problem = "no question.jsonl, *.json, *.jsonl or *.jsonl.gz files in this folder"
        raise Place(str(path)).error(None, problem)
    if not path.is_file():
        raise Place(str(path)).error(None, "no such file or folder")
    if path.name == "question.jsonl" and (path.parent / "model_answer").is_dir():
        return "arena_hard", [path.parent]
    if path.name.endswith(JSONL_SUFFIXES):
        return "jsonl", [path]
    if path.name.endswith(".json"):
        return "alpaca_eval", [path]
    raise Place(str(path)).error(
        None, "unknown layout: expected .json, .jsonl, .jsonl.gz or a folder"
    )


def _counted(texts: list[str], counts: list[int]) -> IntArray:
    """`counts` with each -1 replaced by the token count of the text at that row."""
    result = np.asarray(counts, dtype=np.int64)
    todo = np.flatnonzero(result < 0)
    if todo.size:
        unique = list(dict.fromkeys(texts[i] for i in todo))
        by_text = dict(zip(unique, count_tokens(unique).tolist(), strict=True))
        result[todo] = [by_text[texts[i]] for i in todo]
    return result


def _finish(rows: RowBuffer) -> tuple[LengthSamples, int]:
    """The buffer as samples (texts counted), without rows of 0 output tokens; and how many."""
    prompt_tokens = _counted(rows.prompts, rows.prompt_tokens)
    output_tokens = _counted(rows.outputs, rows.output_tokens)
    keep = np.flatnonzero(output_tokens >= 1)
    pick = keep.tolist()
    samples = LengthSamples(
        tuple(rows.prompts[i] for i in pick),
        tuple(rows.prompt_ids[i] for i in pick),
        tuple(rows.models[i] for i in pick),
        tuple(rows.sources[i] for i in pick),
        prompt_tokens[keep],
        output_tokens[keep],
    )
    return samples, len(rows) - len(pick)


def read_samples(path: str | Path) -> LoadReport:
    """Load `path` (any supported layout) and report what was read and dropped."""
    layout, targets = detect_layout(path)
    rows = RowBuffer()
    for target in targets:
        if layout == "arena_hard":
            read_arena_hard(target, rows)
        elif layout == "alpaca_eval":
            read_alpaca_eval(target, rows)
        else:
            read_canonical(target, rows)
    samples, num_dropped = _finish(rows)
    if num_dropped:
        _log.info("%s: dropped %d rows with 0 output tokens", path, num_dropped)
    return LoadReport(samples, layout, tuple(str(t) for t in targets), num_dropped)


def load_samples(path: str | Path) -> LengthSamples:
    """The (prompt, model) -> output-length rows of `path`; see the module docstring."""
    return read_samples(path).samples


def concat_samples(parts: Sequence[LengthSamples]) -> LengthSamples:
    """All rows of `parts`, in order."""
    empty = np.zeros(0, dtype=np.int64)
    return LengthSamples(
        tuple(p for part in parts for p in part.prompts),
        tuple(p for part in parts for p in part.prompt_ids),
        tuple(m for part in parts for m in part.models),
        tuple(s for part in parts for s in part.sources),
        np.concatenate([empty, *(part.prompt_tokens for part in parts)]),
        np.concatenate([empty, *(part.output_tokens for part in parts)]),
    )


def write_samples(samples: LengthSamples, path: str | Path) -> None:
    """Write canonical JSONL (no output text); gzip when the name ends in .gz, byte-reproducible."""
    lines = []
    for i in range(len(samples)):
        row = {
            "prompt": samples.prompts[i],
            "prompt_id": samples.prompt_ids[i],
            "model": samples.models[i],
            "source": samples.sources[i],
            "prompt_tokens": int(samples.prompt_tokens[i]),
            "output_tokens": int(samples.output_tokens[i]),
        }
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    data = "".join(lines).encode("utf-8")
    path = Path(path)
    if path.name.endswith(".gz"):
        buffer = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0) as handle:
            handle.write(data)
        data = buffer.getvalue()
    path.write_bytes(data)
