"""`kvsched serve --engine vllm` configures vLLM's real engine config with our scheduler.

Serving itself needs a GPU (tests/service/test_vllm_engine.py, marked gpu); this checks on the
CPU that vLLM 0.33.0 accepts our engine arguments and resolves our scheduler class from them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.vllm.conftest import ROOT, vllm_env


def test_vllm_resolves_our_scheduler_from_the_engine_arguments(
    vllm_python: Path, tmp_path: Path
) -> None:
    env = vllm_env() | {"VLLM_TARGET_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [str(vllm_python), "-m", "tests.vllm.vllm_engine_args", str(tmp_path / "model")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["scheduler_cls"] == "service.vllm_ext.scheduler.KvschedScheduler"
    # 1000 tokens: 32-token blocks on vLLM's CPU platform, 16 elsewhere
    block = 32 if report["cpu"] else 16
    assert report["block_size"] == block
    assert report["num_gpu_blocks_override"] == -(-1000 // block)
    assert report["max_num_seqs"] == 8 and report["max_model_len"] == 128
