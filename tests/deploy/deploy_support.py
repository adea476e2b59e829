"""Shared helpers of the deploy tests (issue 5): paths, external tools, YAML, exposed metrics.

External tools (kubectl, promtool, prometheus) are required, never optional: a machine without
one fails the test with the command that installs it (.ci/deploy-tools.sh), so no check passes
silently. Metric names come from a real `service.metrics.Metrics`, not from a copied list.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]

from service.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "kvsched-alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "kvsched.json"
INSTALL_HINT = "install it with .ci/deploy-tools.sh (Debian, as root)"
HINTS = {"kubectl": "the CI machines have it; see https://kubernetes.io/docs/tasks/tools/"}
METRIC_NAME = re.compile(r"kvsched:[A-Za-z0-9_:]+")
_SUFFIXES = {"counter": ("",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def require_tool(name: str) -> str:
    """The tool's path; fails the test (never skips) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {HINTS.get(name, INSTALL_HINT)}")
    return path


def run_tool(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """Run an installed tool from the repository root, output captured."""
    tool = require_tool(args[0])
    return subprocess.run(
        [tool, *args[1:]], cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False
    )


def yaml_docs(text: str) -> list[dict[str, Any]]:
    """The non-empty documents of a YAML stream (each must be a mapping)."""
    docs = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    assert all(isinstance(doc, dict) for doc in docs), "a YAML document is not a mapping"
    return docs


def load_yaml(path: Path) -> dict[str, Any]:
    (doc,) = yaml_docs(path.read_text())
    return doc


def exposed_series() -> frozenset[str]:
    """Every sample name `kvsched serve` can expose on /metrics (counters with `_total`)."""
    text = Metrics("m").render().decode()
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if kind == "counter" and not name.endswith("_total"):
                name += "_total"  # the text format's TYPE line names counters with or without it
            names.update(name + suffix for suffix in _SUFFIXES[kind])
    return frozenset(names)


def metric_names(promql: str) -> set[str]:
    """The `kvsched:` series names a PromQL expression reads."""
    return set(METRIC_NAME.findall(promql))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
