"""The Dockerfile (issue 5): its invariants, and its install steps replayed in a fresh venv.

No Docker engine exists on CI, so the image is proven in two parts: the parsed Dockerfile keeps
the issue's invariants (each check is also shown to fire on a broken copy), and the default
target's build chain (deps -> build) runs here, step by step, into a fresh `python -m venv`, after
which the installed `kvsched` (not the source tree) answers `--help` and loads its shipped model.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.deploy.deploy_support import ROOT
from tests.deploy.dockerfile import Dockerfile, parse, problems
from tests.deploy.dockerfile_recipe import replay

TEXT = (ROOT / "Dockerfile").read_text()


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
    assert "vLLM slot (issue 7)" in TEXT


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
        "import predictors.default as d, service.app as a; d.load_predictor('default'); "
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
