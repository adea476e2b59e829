"""The house style holds: ruff lint and format, mypy --strict, and the one-way import rule."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# a package may import only the packages after it in this chain (service -> ... -> algorithms)
ALLOWED = {
    "algorithms": {"algorithms"},
    "predictors": {"predictors", "algorithms"},
    "simulator": {"simulator", "predictors", "algorithms"},
    "service": {"service", "simulator", "predictors", "algorithms"},
}
FRAMEWORKS = {
    "fastapi",
    "uvicorn",
    "pydantic",
    "torch",
    "transformers",
    "vllm",
    "prometheus_client",
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_flow_one_way(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        ours = imported_modules(path) & set(ALLOWED)
        assert ours <= ALLOWED[package], f"{path.relative_to(ROOT)} imports {ours}"
        if package == "algorithms":
            assert not imported_modules(path) & FRAMEWORKS, f"{path} imports a framework"


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which(args[0]) is None:
        pytest.fail(f"{args[0]} is not installed: pip install -e '.[test]'")
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, check=False)


def test_ruff_lint_and_format() -> None:
    lint = run_tool("ruff", "check", ".")
    assert lint.returncode == 0, lint.stdout
    fmt = run_tool("ruff", "format", "--check", ".")
    assert fmt.returncode == 0, fmt.stdout


def test_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:]
