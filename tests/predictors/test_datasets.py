"""Tests for predictors/datasets.py: each layout on the shipped slices, the shipped corpus, the
canonical JSONL / completion log, and one-line format errors naming file, place and field."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from predictors.base import LengthSamples
from predictors.datasets import (
    concat_samples,
    detect_layout,
    load_samples,
    prompt_id_of,
    read_samples,
    write_samples,
)
from predictors.jsonl import FormatError
from predictors.tokenizer import count_tokens

TEXT = Path(__file__).resolve().parents[2] / "data/text"
ALPACA = TEXT / "examples/alpaca_eval"
ARENA = TEXT / "examples/arena_hard_v0.1"
CORPUS = TEXT / "lengths.jsonl.gz"
ALPACA_MODELS = {"gpt4_1106_preview", "Meta-Llama-3-8B-Instruct"}
ARENA_MODELS = {"gpt-4-0314", "gpt-3.5-turbo-0125"}


def _jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_alpaca_eval_folder() -> None:
    report = read_samples(ALPACA)
    s = report.samples
    assert report.layout == "alpaca_eval" and len(report.files) == 2
    assert len(s) == 40 and report.num_dropped_empty == 0
    assert set(s.models) == ALPACA_MODELS
    assert len(set(s.prompt_ids)) == 20
    # the same instruction gets the same id in both model files, once per model
    for prompt_id, n in Counter(s.prompt_ids).items():
        assert n == 2
        assert {m for m, p in zip(s.models, s.prompt_ids, strict=True) if p == prompt_id} == (
            ALPACA_MODELS
        )
    assert s.prompt_ids[0] == prompt_id_of(s.prompts[0])
    assert s.sources[0] == "alpaca_eval/helpful_base"
    assert all(src.startswith("alpaca_eval/") for src in s.sources)
    assert np.array_equal(s.prompt_tokens, count_tokens(s.prompts))
    assert int(s.output_tokens.min()) >= 1


def test_alpaca_eval_single_file() -> None:
    s = load_samples(ALPACA / "gpt4_1106_preview.json")
    assert len(s) == 20 and set(s.models) == {"gpt4_1106_preview"}


def test_arena_hard_folder() -> None:
    report = read_samples(ARENA)
    s = report.samples
    assert report.layout == "arena_hard" and len(s) == 30
    questions = [json.loads(line) for line in (ARENA / "question.jsonl").read_text().splitlines()]
    assert set(s.prompt_ids) == {q["uid"] for q in questions}
    assert Counter(s.prompt_ids) == Counter({q["uid"]: 2 for q in questions})
    assert set(s.models) == ARENA_MODELS
    assert set(s.sources) == {"arena_hard/arena-hard-v0.1"}
    by_uid = {q["uid"]: q["prompt"] for q in questions}
    assert all(by_uid[u] == p for u, p in zip(s.prompt_ids, s.prompts, strict=True))
    # question.jsonl itself names the same folder
    assert load_samples(ARENA / "question.jsonl").prompt_ids == s.prompt_ids


def test_shipped_corpus() -> None:
    report = read_samples(CORPUS)
    s = report.samples
    assert report.layout == "jsonl"
    assert len(s) == 25_647  # 30 AlpacaEval files (24,149 rows, 2 empty dropped) + 3 x 500
    assert len(set(s.prompt_ids)) == 1305 and len(set(s.models)) == 33
    assert Counter(src.split("/")[0] for src in s.sources) == {
        "alpaca_eval": 24_147,
        "arena_hard": 1500,
    }
    assert int(s.output_tokens.min()) >= 1 and int(s.prompt_tokens.min()) >= 1


def test_corpus_agrees_with_the_original_layouts() -> None:
    corpus = load_samples(CORPUS)
    columns = (corpus.prompt_ids, corpus.models, corpus.prompt_tokens, corpus.output_tokens)
    rows = {(p, m): (int(pt), int(ot)) for p, m, pt, ot in zip(*columns, strict=True)}
    for part in (load_samples(ALPACA), load_samples(ARENA)):
        for i in range(len(part)):
            key = (part.prompt_ids[i], part.models[i])
            assert rows[key] == (part.prompt_tokens[i], part.output_tokens[i])


def test_canonical_jsonl_and_completion_log(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "log.jsonl",
        [
            {"prompt": "Hello world", "output_tokens": 7, "model": "m1", "prompt_tokens": 9},
            {"prompt": "Hello world", "output": "Hello world", "model": None, "ts": 1.5},
            {"prompt": "Say hi", "output_tokens": 3, "prompt_id": "q1", "source": "log", "x": []},
        ],
    )
    s = load_samples(path)
    assert s.prompt_tokens.tolist() == [9, 2, 2]  # given, else counted
    assert s.output_tokens.tolist() == [7, 2, 3]
    assert s.models == ("m1", "", "")
    assert s.prompt_ids == (prompt_id_of("Hello world"), prompt_id_of("Hello world"), "q1")
    assert s.sources == ("jsonl", "jsonl", "log")


def test_unusual_line_breaks_inside_strings_survive(tmp_path: Path) -> None:
    prompts = ("a\u2028b", "c\x85d\x1ce", "crlf")
    s = load_samples(ARENA).take(np.arange(3, dtype=np.int64))
    s = LengthSamples(prompts, s.prompt_ids, s.models, s.sources, s.prompt_tokens, s.output_tokens)
    write_samples(s, tmp_path / "odd.jsonl")
    raw = (tmp_path / "odd.jsonl").read_text(encoding="utf-8").replace("\n", "\r\n")
    (tmp_path / "odd.jsonl").write_text(raw, encoding="utf-8", newline="")
    assert load_samples(tmp_path / "odd.jsonl").prompts == prompts


def test_zero_output_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    path = _jsonl(
        tmp_path / "a.jsonl",
        [
            {"prompt": "a", "output": ""},
            {"prompt": "b", "output_tokens": 0},
            {"prompt": "c", "output_tokens": 5},
        ],
    )
    report = read_samples(path)
    assert report.num_dropped_empty == 2 and report.num_rows_read == 3
    assert report.samples.prompts == ("c",)


def test_round_trip_gzip_is_reproducible(tmp_path: Path) -> None:
    s = load_samples(ARENA)
    first, second = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz"
    write_samples(s, first)
    write_samples(s, second)
    assert first.read_bytes() == second.read_bytes()
    back = load_samples(first)
    assert back.prompts == s.prompts and back.prompt_ids == s.prompt_ids
    assert back.models == s.models and back.sources == s.sources
    assert np.array_equal(back.prompt_tokens, s.prompt_tokens)
    assert np.array_equal(back.output_tokens, s.output_tokens)
    assert '"output"' not in gzip.decompress(first.read_bytes()).decode()


def test_folder_of_jsonl_and_concat(tmp_path: Path) -> None:
    _jsonl(tmp_path / "b.jsonl", [{"prompt": "b", "output_tokens": 2}])
    _jsonl(tmp_path / "a.jsonl", [{"prompt": "a", "output_tokens": 1}])
    layout, files = detect_layout(tmp_path)
    assert layout == "jsonl" and [f.name for f in files] == ["a.jsonl", "b.jsonl"]
    s = load_samples(tmp_path)
    both = concat_samples([s, s])
    assert both.prompts == ("a", "b", "a", "b") and both.output_tokens.tolist() == [1, 2, 1, 2]
    assert len(concat_samples([])) == 0


BAD_JSONL = [
    ('{"prompt": "a", "output_tokens": 1}\n{"prompt": "b", "output_tokens": ', r":2: invalid"),
    ('{"prompt": "a", "output_tokens": 1}\n\n{"output_tokens": 2}', r":3: field 'prompt'"),
    ('{"prompt": "a", "output_tokens": "12"}', r":1: field 'output_tokens': expected an"),
    ('{"prompt": "a", "output_tokens": -1}', r":1: field 'output_tokens'"),
    ('{"prompt": "a", "output_tokens": true}', r":1: field 'output_tokens'"),
    ('{"prompt": "a", "output_tokens": 1.5}', r":1: field 'output_tokens'"),
    ('{"prompt": "a"}', r":1: field 'output_tokens': missing"),
    ('{"prompt": "a", "output": 3}', r":1: field 'output': expected a string"),
    ('{"prompt": 5, "output_tokens": 1}', r":1: field 'prompt'"),
    ('{"prompt": "a", "output_tokens": 1, "prompt_tokens": "x"}', r"field 'prompt_tokens'"),
    ('{"prompt": "a", "output_tokens": 1, "model": 3}', r":1: field 'model'"),
    ("[1, 2]", r":1: expected a JSON object"),
    ('{"uid": "u", "messages": []}', r":1: this is an Arena-Hard answer file"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_JSONL)
def test_malformed_jsonl_names_file_line_field(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FormatError, match=expected) as info:
        load_samples(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert isinstance(info.value, ValueError)


BAD_JSON = [
    ([{"instruction": "a", "output": "b"}, {"instruction": "c"}], r"record 2: field 'output'"),
    ([{"instruction": "a", "output": "b", "generator": 7}], r"record 1: field 'generator'"),
    ([{"output": "b"}], r"record 1: field 'instruction': missing"),
    ([{"instruction": "a", "output": "b"}, "oops"], r"record 2: expected a JSON object"),
    ({"instruction": "a"}, r"expected a JSON list"),
]


@pytest.mark.parametrize(("records", "expected"), BAD_JSON)
def test_malformed_alpaca_json_names_record(tmp_path: Path, records: object, expected: str) -> None:
    path = tmp_path / "model.json"
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    with pytest.raises(FormatError, match=f"^{path}: {expected}"):
        load_samples(path)


def test_invalid_json_list_names_line(tmp_path: Path) -> None:
    path = tmp_path / "model.json"
    path.write_text('[\n  {"instruction": "a",\n  "output": }\n]', encoding="utf-8")
    with pytest.raises(FormatError, match=r"model\.json:3: invalid JSON"):
        load_samples(path)


def _arena(tmp_path: Path, questions: list[object], answers: list[object]) -> Path:
    (tmp_path / "model_answer").mkdir()
    _jsonl(tmp_path / "question.jsonl", questions)
    _jsonl(tmp_path / "model_answer/m.jsonl", answers)
    return tmp_path


def _answer(uid: str, text: object) -> dict[str, object]:
    turns = [{"role": "user", "content": "q"}, {"role": "assistant", "content": text}]
    return {"uid": uid, "model": "m", "messages": turns}


def test_arena_hard_older_turns_and_plain_content(tmp_path: Path) -> None:
    folder = _arena(
        tmp_path,
        [{"uid": "u1", "category": "coding", "turns": [{"content": "Hello world"}]}],
        [_answer("u1", "Hello world"), {**_answer("u1", {"answer": "Hi"}), "model": "n"}],
    )
    s = load_samples(folder)
    assert s.prompts == ("Hello world", "Hello world") and s.sources[0] == "arena_hard/coding"
    assert s.output_tokens.tolist() == [2, 1] and s.models == ("m", "n")


Q1 = {"uid": "u1", "prompt": "p"}
BAD_ARENA = [
    ([Q1], [_answer("u2", {"answer": "x"})], r"m\.jsonl:1: field 'uid'"),
    ([Q1], [{"uid": "u1"}], r"m\.jsonl:1: field 'messages'"),
    ([Q1], [_answer("u1", {"text": "x"})], r":1: field 'messages'"),
    ([Q1, {**Q1, "prompt": "q"}], [], r"question\.jsonl:2: field 'uid': duplicate"),
    ([{"uid": "u1"}], [], r"question\.jsonl:1: field 'prompt': missing"),
]


@pytest.mark.parametrize(("questions", "answers", "expected"), BAD_ARENA)
def test_malformed_arena_hard(
    tmp_path: Path, questions: list[object], answers: list[object], expected: str
) -> None:
    with pytest.raises(FormatError, match=expected):
        load_samples(_arena(tmp_path, questions, answers))


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="no such file or folder"):
        load_samples(tmp_path / "missing.jsonl")
    with pytest.raises(FormatError, match="no question.jsonl"):
        load_samples(tmp_path)
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(FormatError, match="unknown layout"):
        load_samples(tmp_path / "data.csv")
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip")
    with pytest.raises(FormatError, match=r"broken\.jsonl\.gz: cannot read"):
        load_samples(tmp_path / "broken.jsonl.gz")
