"""`kvsched replan`: shift detection and the switch verdict against a stored plan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.cli import main
from simulator.traces import load_trace

CONV = "data/traces/azure_conv_2023.csv"
CODE = "data/traces/azure_code_2023.csv"
PLAN_ARGS = ["--cost-model", "llama3-8b-h100", "--gpus", "4", "--latency-target-s", "20"]


def _plan(trace: str, out: Path, *extra: str) -> dict[str, object]:
    argv = ["plan", "--trace", trace, *PLAN_ARGS, "--samples", "500", "--no-baselines"]
    assert main([*argv, "--no-progress", "--json", str(out), *extra]) == 0
    doc: dict[str, object] = json.loads(out.read_text())
    return doc


def _write_jsonl(path: Path, prompts: np.ndarray, outputs: np.ndarray) -> Path:
    with path.open("w") as f:
        for p, o in zip(prompts, outputs, strict=True):
            f.write(json.dumps({"prompt_tokens": int(p), "output_tokens": int(o)}) + "\n")
    return path


def _replan(plan: Path, traffic: Path | str, out: Path, *extra: str) -> dict[str, object]:
    argv = ["replan", "--plan", str(plan), "--traffic", str(traffic), "--json", str(out), *extra]
    assert main(argv) == 0
    doc: dict[str, object] = json.loads(out.read_text())  # strict JSON: no Infinity
    return doc


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A plan made on a synthetic workload, and the directory for traffic files."""
    tmp = tmp_path_factory.mktemp("replan")
    rng = np.random.default_rng(0)
    prompts = rng.integers(200, 1500, 3000)
    outputs = np.maximum(1, rng.lognormal(5.0, 0.6, 3000)).astype(int)
    trace = _write_jsonl(tmp / "reference.jsonl", prompts, outputs)
    _plan(str(trace), tmp / "plan.json")
    return tmp / "plan.json", tmp


def _traffic(tmp: Path, name: str, scale: float, n: int = 2000, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    prompts = rng.integers(200, 1500, n)
    outputs = np.maximum(1, scale * rng.lognormal(5.0, 0.6, n)).astype(int)
    return _write_jsonl(tmp / name, prompts, outputs)


def test_plan_stores_its_reference_sample(tmp_path: Path) -> None:
    # --profile is the older spelling of --cost-model and is still accepted
    argv = ["plan", "--trace", CODE, "--profile", "llama3-8b-h100", "--gpus", "4"]
    out = tmp_path / "plan.json"
    assert main([*argv, "--latency-target-s", "20", "--samples", "300", "--no-baselines",
                 "--no-progress", "--json", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    ref = doc["reference"]
    assert len(ref["prompt_tokens"]) == len(ref["output_tokens"]) == 300
    assert np.mean(ref["output_tokens"]) == pytest.approx(doc["workload"]["mean_output_tokens"])
    assert doc["cost_model_source"] == "llama3-8b-h100"


def test_same_distribution_keeps_the_plan(synthetic: tuple[Path, Path]) -> None:
    plan, tmp = synthetic
    doc = _replan(plan, _traffic(tmp, "same.jsonl", 1.0), tmp / "same.json")
    shift = doc["shift"]
    assert isinstance(shift, dict) and not shift["shifted"] and shift["ks"] < 0.1
    assert doc["switch"] is False and doc["reason"] == "keep: no shift"


def test_longer_outputs_are_a_shift_and_the_plan_in_force_loses(
    synthetic: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    plan, tmp = synthetic
    planned = json.loads(plan.read_text())["throughput_rps"]
    doc = _replan(plan, _traffic(tmp, "long.jsonl", 3.0), tmp / "long.json")
    shift, current, best = doc["shift"], doc["current"], doc["best"]
    assert isinstance(shift, dict) and isinstance(current, dict) and isinstance(best, dict)
    assert shift["shifted"] and shift["mean_change"] > 1.5
    assert any("mean" in reason for reason in shift["reasons"])
    # three times the decode work: the plan in force gets less than it was planned for
    assert current["throughput_rps"] < 0.7 * planned
    # and its S99 output now takes far longer than the target: switch, whatever the throughput
    assert not current["meets_target"] and current["latency_s"] > 20
    assert best["latency_s"] <= 20 and doc["gain"] is None
    assert doc["switch"] is True and "misses the latency target" in str(doc["reason"])
    assert doc["switch_cost_s"] == (0.0 if doc["switch_kind"] == "hot" else 30.0)
    out = capsys.readouterr().out
    assert "shift:      output mean changed" in out and "in force:" in out and "best:" in out


def test_too_few_requests_never_decide(synthetic: tuple[Path, Path]) -> None:
    plan, tmp = synthetic
    doc = _replan(plan, _traffic(tmp, "few.jsonl", 3.0, n=50), tmp / "few.json")
    assert doc["switch"] is False and "too few" in str(doc["reason"])


def test_conv_to_code_is_a_shift_and_a_switch(tmp_path: Path) -> None:
    plan = tmp_path / "plan.json"
    _plan(CONV, plan)
    doc = _replan(plan, CODE, tmp_path / "code.json")
    shift, best = doc["shift"], doc["best"]
    assert isinstance(shift, dict) and isinstance(best, dict)
    code = load_trace(CODE).output_tokens[-2000:]
    window = doc["window"]
    assert isinstance(window, dict) and window["mean_output_tokens"] == pytest.approx(code.mean())
    assert shift["shifted"] and shift["ks"] > 0.5 and shift["mean_change"] < -0.5
    # code's short outputs want a different plan, and the switch pays for itself
    assert best["label"] != json.loads(plan.read_text())["label"]
    assert doc["switch"] is True and doc["gain"] is not None and doc["gain"] >= 1.05


def test_the_completion_log_is_traffic(synthetic: tuple[Path, Path]) -> None:
    plan, tmp = synthetic
    log = tmp / "completions.jsonl"
    rng = np.random.default_rng(3)
    with log.open("w") as f:  # the lines `kvsched serve --completion-log` writes
        for i in range(400):
            out = int(3 * rng.lognormal(5.0, 0.6))
            row = {"prompt": "x", "prompt_tokens": int(rng.integers(200, 1500)), "model": "m",
                   "output_tokens": out, "ts": 1.7e9 + i, "lo": 1, "hi": 2 * out,
                   "max_tokens": 4096, "finish_reason": "stop"}  # fmt: skip
            f.write(json.dumps(row) + "\n")
    doc = _replan(plan, log, tmp / "log.json")
    window = doc["window"]
    assert isinstance(window, dict) and window["samples"] == 400
    assert doc["shift"]["shifted"]  # type: ignore[index]


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvsched: error: ") and err.count("\n") == 1
    return err


def test_bad_inputs_are_one_line_errors(
    synthetic: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plan, _ = synthetic
    broken = tmp_path / "broken.json"
    broken.write_text('{\n "config": \n}')
    assert f"--plan {broken}: line 3" in _error(
        ["replan", "--plan", str(broken), "--traffic", CODE], capsys
    )
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"config": {}, "cluster": {}, "latency_target_s": 1}))
    assert "missing ['reference', 'throughput_rps']" in _error(
        ["replan", "--plan", str(old), "--traffic", CODE], capsys
    )
    bad_trace = tmp_path / "bad.jsonl"
    bad_trace.write_text('{"prompt_tokens": 5, "output_tokens": "many"}\n')
    assert str(bad_trace) in _error(["replan", "--plan", str(plan), "--traffic", str(bad_trace)],
                                    capsys)  # fmt: skip
    assert "--min-samples" in _error(
        ["replan", "--plan", str(plan), "--traffic", CODE, "--window", "10"], capsys
    )
