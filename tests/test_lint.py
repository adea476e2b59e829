"""The house style holds: ruff lint and format, mypy --strict, and the import rules: packages
import one way, no module imports itself through others (a cycle), and a `_private` module is
imported only from its own package.

Import rules count every import statement: module level, inside functions, and under
`if TYPE_CHECKING:` (a cycle through type-only imports still ties the modules together)."""

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


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_graph() -> dict[str, set[str]]:
    """Each module of our packages -> the modules of our packages it imports (any import)."""
    paths = {module_name(p): p for package in ALLOWED for p in (ROOT / package).rglob("*.py")}

    def ours(name: str) -> str | None:  # `a.b.C` -> `a.b`: the longest prefix that is a module
        while name and name not in paths:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in paths.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets.update(ours(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                targets.update(ours(f"{base}.{alias.name}") for alias in node.names)
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = [stack.pop()]
            while component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycles() -> None:
    cycles = import_cycles(module_graph())
    assert not cycles, f"import cycles (break them with a protocol or by passing it in): {cycles}"


def test_private_modules_stay_in_their_package() -> None:
    for module, targets in module_graph().items():
        package = module.rpartition(".")[0]
        for target in targets:
            parent, _, name = target.rpartition(".")
            if name.startswith("_") and not name.startswith("__") and parent != package:
                is_package = (ROOT / module.replace(".", "/") / "__init__.py").exists()
                assert is_package and parent == module, f"{module} imports private {target}"


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


def test_algorithms_tests_do_not_import_the_simulator() -> None:
    """tests/algorithms, with the helpers it shares (tests.factories, tests.strategies, tests.jobs),
    runs the scheduling loop without the simulator: a fresh interpreter imports them all."""
    modules = ["tests.factories", "tests.strategies", "tests.jobs"] + [
        f"tests.algorithms.{path.stem}" for path in sorted((ROOT / "tests/algorithms").glob("*.py"))
    ]
    script = (
        "import importlib, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'simulator'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]", f"simulator imported: {result.stdout}"
