"""The Dockerfile (issue 5): its invariants, its install steps replayed, and the image itself.

The parsed Dockerfile keeps the issue's invariants (each check is also shown to fire on a broken
copy); the default target's build chain (deps -> build) runs here, step by step, into a fresh
`python -m venv`, after which the installed `kvsched` (not the source tree) answers `--help` and
loads its shipped model. There is no Docker engine on CI, so the image is built and run with
buildah (`.ci/build-image.sh`, issue 15: a debootstrapped bookworm base, `buildah bud`, then
`.ci/check-image.py` serving a streamed chat completion from inside the image); the tests run
that script (seconds when its caches are warm, as after `.ci/run` built the image) and read what
the check saw. They need root, buildah and debootstrap, and fail, naming the script, without them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deploy_support import ROOT
from tests.deploy.dockerfile import Dockerfile, parse, problems
from tests.deploy.dockerfile_recipe import replay

TEXT = (ROOT / "Dockerfile").read_text()
BUILD_IMAGE = ROOT / ".ci" / "build-image.sh"
CHECK_IMAGE = ROOT / ".ci" / "check-image.py"
IMAGE = "localhost/kvsched:ci"  # what .ci/run builds, so the tests' run of the script is warm
IMAGE_HINT = "run .ci/build-image.sh as root on Debian (it apt-get installs what it needs); CI does"


def test_the_dockerfile_keeps_every_invariant() -> None:
    dockerfile = parse(TEXT)
    assert problems(dockerfile) == []
    assert {"deps", "build", "runtime", "gpu", "cpu"} <= {s.name for s in dockerfile.stages}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("python:3.11.7-slim-bookworm", "python:3.11-slim", "not an exact tag"),
        ("USER 10001:10001\n", "USER root\n", "no numeric non-root USER"),
        ("HEALTHCHECK", "# HEALTHCHECK", "no HEALTHCHECK"),
        ("libgomp1", "libgomp1 build-essential", "builds in the final image"),
        ("COPY --from=build /opt/venv /opt/venv", "COPY --from=build /src /src", "more than"),
        ("COPY pyproject.toml", "COPY service s\nCOPY pyproject.toml", "source is copied before"),
    ],
)  # fmt: skip
def test_each_invariant_check_fires_on_a_broken_dockerfile(
    old: str, new: str, expected: str
) -> None:
    assert old in TEXT
    found = problems(parse(TEXT.replace(old, new)))
    assert any(expected in problem for problem in found), found


def test_the_gpu_target_installs_cuda_torch_and_the_hf_extra() -> None:
    dockerfile = parse(TEXT)
    runs = " ".join(run for stage in dockerfile.chain("build-gpu") for run in stage.all("RUN"))
    assert '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"' in runs
    assert "--extra hf" in runs
    gpu_env = " ".join(dockerfile.stage("gpu").all("ENV"))
    assert "KVSCHED_ENGINE=hf" in gpu_env and "HF_HUB_OFFLINE=1" in gpu_env


def test_the_image_serves_on_all_interfaces_on_port_8000() -> None:
    chain = parse(TEXT).chain("cpu")
    envs = " ".join(env for stage in chain for env in stage.all("ENV"))
    assert "KVSCHED_HOST=0.0.0.0" in envs and "KVSCHED_PORT=8000" in envs
    assert ["8000"] == [port for stage in chain for port in stage.all("EXPOSE")]
    assert [stage.all("CMD") for stage in chain if stage.all("CMD")] == [['["serve"]']]


def _dockerignore_allows(path: str) -> bool:
    """gitignore-style last match wins; ours is an allow-list: `*` then `!path` lines."""
    allowed = False
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        rule = line.strip()
        if rule == "*":
            allowed = False
        elif rule.startswith("!") and path.startswith(rule[1:].rstrip("/")):
            allowed = True
    return allowed


def test_dockerignore_sends_exactly_what_the_dockerfile_copies() -> None:
    dockerfile = parse(TEXT)
    copies = [c for stage in dockerfile.stages for c in stage.all("COPY") if "--from" not in c]
    sources = {word for copy in copies for word in copy.split()[:-1]}
    assert sources and all(_dockerignore_allows(source) for source in sources)
    for never in ("tests", "data", ".venv", ".git", "docs", "benchmarks"):
        assert not _dockerignore_allows(never), never


def _check_installed(venv: Path, cwd: Path) -> None:
    help_text = subprocess.run(
        [venv / "bin" / "kvsched", "--help"], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout
    assert "serve" in help_text
    probe = (
        "import predictors.default as d, service.http.app as a; d.load_predictor('default'); "
        "print(d.__file__, a.__file__)"
    )
    out = subprocess.run(
        [venv / "bin" / "python", "-c", probe], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout
    assert all(path.startswith(str(venv)) for path in out.split()), out  # not the source tree


def test_the_build_steps_install_a_working_kvsched(tmp_path: Path) -> None:
    dockerfile: Dockerfile = parse(TEXT)
    root = tmp_path / "root"
    replay(dockerfile, "build", ROOT, root, timeout_s=300)
    _check_installed(root / "opt" / "venv", tmp_path)


def require_image_tools(tools: tuple[str, ...] = ("buildah", "debootstrap")) -> None:
    """Fails (never skips) the image tests on a machine that cannot build the image."""
    if os.geteuid() != 0:
        pytest.fail(f"building and running the image needs root: {IMAGE_HINT}")
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: {IMAGE_HINT}")


def test_missing_image_tools_fail_and_name_the_build_script() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"\.ci/build-image\.sh"):
        require_image_tools(("buildah-not-installed",))


@pytest.fixture(scope="module")
def image_check(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Builds the image (warm: the layer cache) and runs it; the check's JSON report."""
    require_image_tools()
    report = tmp_path_factory.mktemp("image") / "check.json"
    done = subprocess.run(
        [BUILD_IMAGE, "--report", report],
        env={**os.environ, "KVSCHED_IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, f".ci/build-image.sh failed:\n{done.stderr[-4000:]}"
    result: dict[str, Any] = json.loads(report.read_text())
    return result


@pytest.mark.slow
def test_the_built_image_serves_a_streamed_chat_as_uid_10001(image_check: dict[str, Any]) -> None:
    assert image_check["failures"] == []
    assert image_check["config"]["User"] == "10001:10001"
    assert image_check["config"]["Entrypoint"] + image_check["config"]["Cmd"] == [
        "kvsched",
        "serve",
    ]
    assert image_check["ready"]["status"] == 200 and image_check["health"]["status"] == 200
    chat = image_check["chat"]
    assert chat["content_type"].startswith("text/event-stream")
    assert chat["done_last"] and chat["done_count"] == 1
    assert chat["chunks_with_text"] >= 1 and chat["content"].strip()
    assert chat["finish_reason"] in ("stop", "length")
    metrics = image_check["metrics"]
    assert metrics["status"] == 200 and metrics["kvsched_samples"] > 0
    assert metrics["request_success_total"] >= 1  # the chat request went through the gateway
    # the listening server and every process it started (the worker), read from /proc
    processes = image_check["processes"]
    assert len(processes) >= 2 and image_check["listener_pid"] == processes[0]["pid"]
    assert all(set(p["uid"]) == set(p["gid"]) == {"10001"} for p in processes), processes
    assert image_check["healthcheck_rc"] == 0
    assert image_check["stopped"]  # no process of the server outlived the check


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (["--user", "0:0"], ["image USER is '0:0'", "runs as uid/gid ['0', '0', '0', '0']"]),
        (["--cmd", '["serve", "--no-such-flag"]'], ["not kvsched serve", "exited with status"]),
    ],
)  # fmt: skip
def test_the_image_check_fails_on_a_broken_image(
    image_check: dict[str, Any], tmp_path: Path, config: list[str], expected: list[str]
) -> None:
    """The check is not a formality: a root image and one whose server cannot start fail it."""
    broken = f"{IMAGE}-broken-{os.getpid()}"
    container = subprocess.run(
        ["buildah", "from", "--pull=never", IMAGE], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        subprocess.run(["buildah", "config", *config, container], check=True)
        subprocess.run(
            ["buildah", "commit", "--quiet", "--format", "docker", container, broken], check=True
        )
        report = tmp_path / "check.json"
        done = subprocess.run(
            ["python3", CHECK_IMAGE, broken, "--report", report, "--ready-timeout-s", "60"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        subprocess.run(["buildah", "rm", container], capture_output=True, check=False)
        subprocess.run(["buildah", "rmi", broken], capture_output=True, check=False)
    assert done.returncode == 1, done.stdout + done.stderr
    for message in expected:
        assert message in done.stderr, done.stderr
    assert json.loads(report.read_text())["stopped"]  # cleaned up after a failure too
