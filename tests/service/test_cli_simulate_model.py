"""`kvsched simulate --intervals model=...`: learned intervals, refined while running."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main

PROMPTS = [
    "Write a haiku about the sea.",
    "Explain how TCP congestion control works, in detail, with examples.",
    "What is 2 + 2?",
    "Write a Python function that parses a CSV file and returns a list of dicts.",
    "Translate 'good morning' into French.",
    "Summarize the plot of Hamlet in three paragraphs.",
]


def write_trace(path: Path, *, with_prompts: bool = True) -> Path:
    with path.open("w") as f:
        for i, prompt in enumerate(PROMPTS * 3):
            record = {"arrival_s": 0.1 * i, "prompt_tokens": 20 + i, "output_tokens": 40 + 37 * i}
            if with_prompts:
                record |= {"prompt": prompt, "model": "gpt-4o-2024-05-13"}
            f.write(json.dumps(record) + "\n")
    return path


def test_default_model_intervals_run_every_policy(tmp_path: Path) -> None:
    trace, out = write_trace(tmp_path / "t.jsonl"), tmp_path / "out.json"
    code = main(
        [
            "simulate",
            "--trace",
            str(trace),
            "--intervals",
            "model=default",
            "--cost-model",
            "llama2-70b-a100x2",
            "--kv-tokens",
            "3000",
            "--policies",
            "amin,amax,mcsf,vllm,hsf",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    results = json.loads(out.read_text())["results"]
    for summary in results.values():
        assert summary["completed"] + summary["rejected"] == len(PROMPTS) * 3
        assert summary["peak_kv_tokens"] <= 3000


def test_model_intervals_need_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_trace(tmp_path / "t.jsonl", with_prompts=False)
    code = main(
        [
            "simulate",
            "--trace",
            str(trace),
            "--intervals",
            "model=default",
            "--policies",
            "amin",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "needs prompt texts" in err and err.count("\n") == 1


def test_bad_model_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace, bad = write_trace(tmp_path / "t.jsonl"), tmp_path / "bad.kvp"
    bad.write_text("not a model")
    code = main(
        [
            "simulate",
            "--trace",
            str(trace),
            "--intervals",
            f"model={bad}",
            "--policies",
            "amin",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and str(bad) in err and err.count("\n") == 1
