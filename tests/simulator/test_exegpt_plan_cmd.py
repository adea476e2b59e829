"""`kvsched plan` end to end through the CLI entry point (issue 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main

TRACE = "data/traces/azure_code_2023.csv"


def test_plan_writes_the_documented_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan.json"
    argv = ["plan", "--trace", TRACE, "--cost-model", "llama3-8b-h100", "--gpus", "4"]
    code = main([*argv, "--latency-target-s", "10", "--samples", "200", "--json", str(out)])
    assert code == 0
    doc = json.loads(out.read_text())
    for key in ("policy", "throughput_rps", "latency_s", "config", "evaluated", "grid_size"):
        assert key in doc
    assert doc["latency_target_s"] == 10 and doc["latency_s"] <= 10
    assert 0 < doc["evaluated"] < doc["grid_size"]
    assert set(doc["baselines"]) == {"static", "continuous"}
    assert doc["baselines"]["static"]["throughput_rps"] > 0
    workers = doc["serve"]["workers"]
    devices = sum(w["devices"] for w in workers) * doc["config"]["replicas"]
    assert devices == 4 and {w["role"] for w in workers} <= {"mixed", "prefill", "decode"}
    assert "predicted:" in capsys.readouterr().out


def test_plan_audit_prints_and_records_each_knob(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan.json"
    argv = ["plan", "--trace", TRACE, "--cost-model", "llama3-8b-h100", "--gpus", "4"]
    argv += ["--latency-target-s", "10", "--samples", "200", "--no-baselines"]
    assert main([*argv, "--audit", "--json", str(out)]) == 0
    audit = json.loads(out.read_text())["audit"]
    assert audit["tolerance"] == 0.05
    knobs = {k["knob"]: k for k in audit["knobs"]}
    assert set(knobs) == {"encode_batch", "encode_frequency", "micro_batches", "tp_gpus"}
    for name in ("encode_batch", "encode_frequency"):  # the directions the bounds rely on
        assert knobs[name]["pairs"] > 50
        assert knobs[name]["throughput_violations"] == knobs[name]["latency_violations"] == 0
    tp = knobs["tp_gpus"]  # more TP devices raise throughput here, against the paper
    assert tp["throughput_violations"] > 0 and "throughput" in tp["examples"][0]
    printed = capsys.readouterr().out
    assert printed.index("predicted:") < printed.index("audit:")
    lines = {line.split()[0]: line for line in printed.splitlines() if line.startswith("  ")}
    pairs = knobs["encode_batch"]["pairs"]
    assert f"{pairs} pairs, 0 throughput / 0 latency violations" in lines["encode_batch"]
    tp_line = lines["tp_gpus"]
    assert f"{tp['throughput_violations']} throughput" in tp_line
    assert f"e.g. {tp['examples'][0]}" in tp_line
    assert main(argv) == 0 and "audit:" not in capsys.readouterr().out  # only when asked


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsched: error: ") and err.count("\n") == 1
    return err


def test_plan_errors_are_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["plan", "--trace", TRACE, "--gpus", "2", "--latency-target-s", "5", "--no-baselines"]
    assert "unknown cost model" in _error([*base, "--profile", "h200-magic"], capsys)
    bad = tmp_path / "bad.toml"
    bad.write_text("base_ms = 'fast'\n")
    assert str(bad) in _error([*base, "--profile", str(bad)], capsys)
    tight = ["plan", "--trace", TRACE, "--profile", "llama3-8b-h100", "--gpus", "1"]
    err = _error([*tight, "--latency-target-s", "0.05", "--no-baselines"], capsys)
    assert "no configuration meets --latency-target-s 0.05" in err
    zero = ["plan", "--trace", TRACE, "--profile", "unit", "--gpus", "0"]
    assert "--gpus must be >= 1" in _error([*zero, "--latency-target-s", "5"], capsys)
