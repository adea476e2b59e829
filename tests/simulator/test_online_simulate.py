"""`kvsched simulate --intervals model=...,online`: the simulator runs serving's calibrator."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from predictors.base import IntArray, PromptBatch
from predictors.online import OnlineCalibrator, OnlineIntervals, replay
from service.cli import main
from simulator.cost_model import load_cost_model
from simulator.run import Workload, simulate


class Fixed:
    """[10, 20] for every prompt: far below the true lengths of the stream below."""

    d_lo = d_hi = 0.05

    def predict(self, batch: PromptBatch) -> tuple[IntArray, IntArray]:
        hi = np.minimum(20, batch.max_tokens)
        return np.minimum(10, hi), hi

    def refine(
        self, lo: IntArray, hi: IntArray, generated: IntArray, max_tokens: IntArray
    ) -> tuple[IntArray, IntArray]:
        return np.minimum(np.maximum(lo, generated + 1), max_tokens), np.maximum(hi, lo)


def _workload(n: int, gap_s: float) -> tuple[Workload, IntArray]:
    rng = np.random.default_rng(0)
    y = rng.integers(60, 200, size=n).astype(np.int64)
    batch = PromptBatch(("p",) * n, np.full(n, 8), ("m",) * n, np.full(n, 4000))
    online = OnlineIntervals.predict(Fixed(), batch)
    lo, hi = online.calibrator().apply(online.base_lo, online.base_hi, online.max_tokens)
    arrivals = np.arange(n, dtype=np.float64) * gap_s
    return Workload(arrivals, np.full(n, 8), y, lo, hi, online), y


def test_online_simulation_gives_serving_replays_intervals() -> None:
    """One request at a time (each finishes before the next arrives): the simulator's intervals
    are exactly those of `replay`, the function `kvsched predictor eval --online` uses."""
    workload, y = _workload(300, gap_s=1000.0)
    result = simulate(workload, "vllm", load_cost_model("unit", kv_tokens=10_000))
    assert result.online_intervals is not None
    sim_lo, sim_hi = result.online_intervals
    assert workload.online is not None
    caps = workload.online.max_tokens
    lo, hi = replay(
        OnlineCalibrator(0.05, 0.05), workload.online.base_lo, workload.online.base_hi, y, caps
    )
    assert sim_lo.tolist() == lo.tolist() and sim_hi.tolist() == hi.tolist()
    assert (sim_lo[0], sim_hi[0]) == (10, 20)  # nothing learned at the start
    tail = slice(150, None)
    coverage = np.mean((sim_lo[tail] <= y[tail]) & (y[tail] <= sim_hi[tail]))
    assert 0.85 <= coverage <= 0.95
    summary = result.summary["online_calibration"]
    assert summary["observed"] == 300 and summary["delta_hi"] > 1.0


def test_each_policy_run_starts_from_a_fresh_calibrator() -> None:
    workload, _ = _workload(120, gap_s=0.5)  # overlapping requests: batches of several
    cost = load_cost_model("unit", kv_tokens=5_000)
    first = simulate(workload, "vllm", cost)
    again = simulate(workload, "vllm", cost)
    other = simulate(workload, "amin", cost)
    assert first.online_intervals is not None and again.online_intervals is not None
    assert first.online_intervals[0].tolist() == again.online_intervals[0].tolist()
    assert first.summary["online_calibration"] == again.summary["online_calibration"]
    assert other.online_intervals is not None and other.online_intervals[1][0] == 20
    assert other.summary["online_calibration"]["observed"] == 120


def _trace(path: Path) -> Path:
    prompts = ["Write a haiku about the sea.", "What is 2 + 2?", "Explain TCP in detail."]
    with path.open("w") as f:
        for i in range(90):
            record: dict[str, object] = {"arrival_s": 0.5 * i, "prompt_tokens": 20}
            record |= {"output_tokens": 900 + 7 * i, "prompt": prompts[i % 3]}
            record["model"] = "gpt-4o-2024-05-13"
            f.write(json.dumps(record) + "\n")
    return path


def test_cli_online_intervals(tmp_path: Path) -> None:
    trace = _trace(tmp_path / "t.jsonl")
    documents = {}
    for spec in ("model=default", "model=default,online"):
        out = tmp_path / f"{spec.replace(',', '_').replace('=', '_')}.json"
        argv = ["simulate", "--trace", str(trace), "--intervals", spec, "--cost-model", "unit"]
        argv += ["--kv-tokens", "20000", "--policies", "amin,vllm", "--json", str(out)]
        assert main([*argv, "--no-progress"]) == 0
        documents[spec] = json.loads(out.read_text())
    fixed = documents["model=default"]["results"]["amin"]
    online = documents["model=default,online"]["results"]["amin"]
    assert "online_calibration" not in fixed
    state = online["online_calibration"]
    assert state["observed"] == 90 and state["delta_hi"] > 0.0  # lengths above the model's hi
    assert fixed["completed"] == online["completed"] == 90


@pytest.mark.parametrize("spec", ["model=default,offline", "model=default,online,online", "model="])
def test_bad_model_specs_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    trace = _trace(tmp_path / "t.jsonl")
    argv = ["simulate", "--trace", str(trace), "--intervals", spec, "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kvsched: error:") and "online" in err and len(err.splitlines()) == 1
