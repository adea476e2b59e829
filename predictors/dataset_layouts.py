"""Readers for the three length-data layouts (docs/predictors.md), each filling a `RowBuffer`.

AlpacaEval ``model_outputs`` JSON lists, Arena-Hard folders (``question.jsonl`` and
``model_answer/*.jsonl``) and the canonical JSONL (which is also the service's completion log).
Invariant: a prompt gets the same id in every file that holds it (AlpacaEval: hash of the
instruction, Arena-Hard: the question uid, JSONL: ``prompt_id`` or hash of the prompt).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from predictors.dataset_rows import RowBuffer, get_count, get_str, prompt_id_of, shown
from predictors.jsonl import Place, read_jsonl, read_text

DEFAULT_JSONL_SOURCE = "jsonl"


def read_alpaca_eval(path: Path, rows: RowBuffer) -> None:
    """One AlpacaEval file: a JSON list of {instruction, output, generator, dataset}.

    A missing ``generator`` defaults to the file stem, a missing ``dataset`` gives the source
    "alpaca_eval"; output tokens are counted from ``output``.
    """
    try:
        records = json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise Place(str(path), exc.lineno).error(None, f"invalid JSON: {exc.msg}") from None
    if not isinstance(records, list):
        raise Place(str(path)).error(None, "expected a JSON list of AlpacaEval records")
    for index, record in enumerate(records, start=1):
        at = Place(str(path), record=index)
        if not isinstance(record, dict):
            raise at.error(None, f"expected a JSON object, got {shown(record)}")
        prompt = get_str(record, "instruction", at)
        output = get_str(record, "output", at)
        model = get_str(record, "generator", at, default=path.stem)
        dataset = get_str(record, "dataset", at, default="")
        source = f"alpaca_eval/{dataset}" if dataset else "alpaca_eval"
        rows.add(
            prompt,
            prompt_id_of(prompt),
            model,
            source,
            prompt_tokens=None,
            output_tokens=None,
            output=output,
        )


def _read_questions(path: Path) -> dict[str, tuple[str, str]]:
    """uid -> (prompt, source) from an Arena-Hard question.jsonl."""
    questions: dict[str, tuple[str, str]] = {}
    for at, record in read_jsonl(path):
        uid = get_str(record, "uid", at)
        if uid in questions:
            raise at.error("uid", f"duplicate question {uid!r}")
        if "prompt" in record or "turns" not in record:
            prompt = get_str(record, "prompt", at)
        else:
            prompt = _first_turn(record["turns"], at)
        category = get_str(record, "category", at, default="")
        questions[uid] = (prompt, f"arena_hard/{category}" if category else "arena_hard")
    return questions


def _first_turn(turns: object, at: Place) -> str:
    """The prompt of an older question record: ``turns[0].content``."""
    first = turns[0] if isinstance(turns, list) and turns else None
    if not isinstance(first, dict):
        raise at.error("turns", "expected a non-empty list of {content: ...} objects")
    return get_str(first, "content", at)


def _answer_text(record: Mapping[str, object], at: Place) -> str:
    """The last assistant turn's text: ``content.answer`` (or a plain string content)."""
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise at.error("messages", "missing or not a list of chat turns")
    replies = [m for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if not replies:
        raise at.error("messages", "no turn with role 'assistant'")
    content = replies[-1].get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, dict) and isinstance(content.get("answer"), str):
        return str(content["answer"])
    raise at.error(
        "messages", f"assistant content is not a string or {{answer: str}}: {shown(content)}"
    )


def read_arena_hard(folder: Path, rows: RowBuffer) -> None:
    """An Arena-Hard folder: the questions joined by uid with every ``model_answer/*.jsonl``.

    The prompt is the question's text; a missing answer ``model`` defaults to the file stem.
    """
    question_file = folder / "question.jsonl"
    questions = _read_questions(question_file)
    answer_files = sorted((folder / "model_answer").glob("*.jsonl"))
    if not answer_files:
        raise Place(str(folder / "model_answer")).error(None, "no *.jsonl answer files")
    for path in answer_files:
        for at, record in read_jsonl(path):
            uid = get_str(record, "uid", at)
            if uid not in questions:
                raise at.error("uid", f"{uid!r} is not in {question_file.name}")
            prompt, source = questions[uid]
            model = get_str(record, "model", at, default=path.stem)
            output = _answer_text(record, at)
            rows.add(
                prompt, uid, model, source, prompt_tokens=None, output_tokens=None, output=output
            )


def read_canonical(path: Path, rows: RowBuffer) -> None:
    """A canonical JSONL file (``.jsonl`` or ``.jsonl.gz``), e.g. the service's completion log.

    Required: ``prompt`` (str) and ``output_tokens`` (int >= 0) or ``output`` (str, counted).
    Optional: ``model`` (default ""), ``prompt_tokens`` (default: counted), ``prompt_id``
    (default: hash of the prompt), ``source`` (default "jsonl"). Null means absent; other fields
    (``ts``, ``max_tokens``, ...) are ignored.
    """
    for at, record in read_jsonl(path):
        if "messages" in record and "uid" in record:
            raise at.error(None, "this is an Arena-Hard answer file: pass the folder instead")
        prompt = get_str(record, "prompt", at)
        output_tokens = get_count(record, "output_tokens", at)
        output = ""
        if output_tokens is None:
            if record.get("output") is None:
                raise at.error("output_tokens", "missing (give output_tokens or output)")
            output = get_str(record, "output", at)
        rows.add(
            prompt,
            get_str(record, "prompt_id", at, default="") or prompt_id_of(prompt),
            get_str(record, "model", at, default=""),
            get_str(record, "source", at, default=DEFAULT_JSONL_SOURCE),
            prompt_tokens=get_count(record, "prompt_tokens", at),
            output_tokens=output_tokens,
            output=output,
        )
