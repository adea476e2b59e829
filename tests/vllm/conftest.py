"""Fixtures for the vLLM tests: the separate vLLM venv and one report of every scenario.

The venv comes from .ci/vllm-env.sh (built when missing, reused when present). If it cannot
be built the tests FAIL with the script's reason: they are never skipped.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV_SCRIPT = ROOT / ".ci" / "vllm-env.sh"


def vllm_env() -> dict[str, str]:
    """The environment for venv subprocesses: offline, no kvsched settings from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSCHED_POLICY")}
    env.pop("KVSCHED_SCHEDULER_CONFIG", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    proc = subprocess.run(
        [str(ENV_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False
    )
    if proc.returncode != 0:
        pytest.fail(
            f"the vLLM environment could not be built ({ENV_SCRIPT}):\n{proc.stderr[-4000:]}"
        )
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def vllm_report(vllm_python: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs tests/vllm/vllm_scenarios.py once in the venv (about 15 s plus vLLM's import)."""
    work = tmp_path_factory.mktemp("vllm")
    report = work / "report.json"
    proc = subprocess.run(
        [
            str(vllm_python),
            str(ROOT / "tests" / "vllm" / "vllm_scenarios.py"),
            str(work / "model"),
            str(report),
        ],
        cwd=ROOT,
        env=vllm_env(),
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"vllm_scenarios.py failed in {vllm_python}:\n{proc.stderr[-4000:]}")
    data: dict[str, Any] = json.loads(report.read_text())
    return data
