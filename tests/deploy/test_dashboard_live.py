"""Every dashboard query returns data from a real Prometheus scraping a real server (issue 5).

One stack per module: `kvsched serve` (sim engine, fast, two workers) and the `prometheus` binary
(Debian package; missing = failure) scraping it every second with our alert rules loaded. After a
small load (whole and streamed, completions and chat, a few refused requests), each PromQL target
of the dashboard, with its variables substituted as Grafana would, must return a finite sample
over the load window through the HTTP API, and the template variables must list real values.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.deploy.deploy_support import DASHBOARD, ROOT, RULES, free_port, require_tool
from tests.deploy.load import LoadResult, run_load

NAMESPACE, POD = "kvsched-test", "kvsched-test-0"
SCRAPE_S = 1
# Grafana: $__rate_interval = max($__interval + scrape interval, 4 x scrape interval)
VARIABLES = {"$__rate_interval": f"{4 * SCRAPE_S}s", "$namespace": NAMESPACE, "$worker": "0"}


@dataclass(frozen=True, slots=True)
class Stack:
    prometheus: str
    start_s: float
    load: LoadResult


def _config(tmp: Path, kvsched_port: int) -> Path:
    config = {
        "global": {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "kvsched",
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{kvsched_port}"],
                        "labels": {"namespace": NAMESPACE, "pod": POD},
                    }
                ],
            }
        ],
    }
    path = tmp / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def _wait(what: str, check: Any, procs: list[subprocess.Popen[bytes]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc in procs:
            assert proc.poll() is None, f"{proc.args!r} exited while waiting for {what}"
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout_s} s")


def _start(tmp: Path) -> tuple[list[subprocess.Popen[bytes]], str, str]:
    kvsched_port, prom_port = free_port(), free_port()
    serve = [sys.executable, "-m", "service.cli", "serve", "--port", str(kvsched_port)]
    serve += ["--speedup", "50", "--workers", "2", "--log-level", "warning"]
    prometheus = [require_tool("prometheus"), f"--config.file={_config(tmp, kvsched_port)}"]
    prometheus += [f"--storage.tsdb.path={tmp / 'tsdb'}", "--log.level=warn"]
    prometheus += [f"--web.listen-address=127.0.0.1:{prom_port}"]
    procs = []
    for name, cmd in (("serve", serve), ("prometheus", prometheus)):
        with open(tmp / f"{name}.log", "wb") as log:  # the child keeps its own descriptor
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    return procs, f"http://127.0.0.1:{kvsched_port}", f"http://127.0.0.1:{prom_port}"


def query(prometheus: str, expr: str, **params: Any) -> list[dict[str, Any]]:
    path = "query_range" if "start" in params else "query"
    response = httpx.get(
        f"{prometheus}/api/v1/{path}", params={"query": expr, **params}, timeout=10
    )
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _scraped(prometheus: str) -> bool:
    up = query(prometheus, 'up{job="kvsched"} == 1 and on () kvsched:num_requests_running')
    return bool(up)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    procs, kvsched, prometheus = _start(tmp)
    try:
        _wait("kvsched /ready", lambda: httpx.get(f"{kvsched}/ready").status_code == 200, procs, 90)
        _wait(
            "prometheus", lambda: httpx.get(f"{prometheus}/-/ready").status_code == 200, procs, 30
        )
        httpx.post(f"{kvsched}/v1/completions", json={"model": "kvsched-sim", "prompt": "hi"})
        _wait("first scrape", lambda: _scraped(prometheus), procs, 30)
        start_s = time.time()
        load = run_load(kvsched)
        time.sleep(3 * SCRAPE_S)  # the last increments reach Prometheus
        yield Stack(prometheus, start_s, load)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _targets(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for panel in panels:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]
        yield from _targets(panel.get("panels", []))


def substitute(expr: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, VARIABLES[name])
    assert "$" not in expr, f"an unsubstituted variable in {expr}"
    return expr


def _finite(series: list[dict[str, Any]]) -> list[float]:
    values = (float(value) for one in series for _, value in one["values"])
    return [value for value in values if math.isfinite(value)]


def test_every_dashboard_expression_returns_data(stack: Stack) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    targets = list(_targets(dashboard["panels"]))
    assert len(targets) >= 20
    window = {"start": stack.start_s - 2, "end": time.time(), "step": f"{SCRAPE_S}s"}
    empty = []
    for title, expr in targets:
        if not _finite(query(stack.prometheus, substitute(expr), **window)):
            empty.append(f"{title}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)


def _label_values(prometheus: str, definition: str) -> set[str]:
    """Grafana's `label_values(selector, label)` through Prometheus's label-values API."""
    inner = substitute(definition).removeprefix("label_values(").removesuffix(")")
    selector, label = (part.strip() for part in inner.rsplit(",", 1))
    url = f"{prometheus}/api/v1/label/{label}/values"
    body = httpx.get(url, params={"match[]": selector}, timeout=10).json()
    assert body["status"] == "success", body
    return set(body["data"])


def test_template_variables_list_the_real_namespace_and_workers(stack: Stack) -> None:
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    by_name = {var["name"]: var for var in variables}
    assert by_name["datasource"]["type"] == "datasource"
    assert by_name["datasource"]["query"] == "prometheus"
    assert _label_values(stack.prometheus, by_name["namespace"]["definition"]) == {NAMESPACE}
    assert _label_values(stack.prometheus, by_name["worker"]["definition"]) == {"0", "1"}


def _last(prometheus: str, expr: str) -> float:
    (sample,) = query(prometheus, expr)
    return float(sample["value"][1])


def test_prometheus_saw_exactly_the_load(stack: Stack) -> None:
    load, prom = stack.load, stack.prometheus
    assert load.num_ok >= 30 and load.num_streamed >= 10 and load.num_refused >= 2
    finished = _last(prom, 'sum(kvsched:request_success_total{finished_reason=~"stop|length"})')
    assert finished == load.num_ok + 1  # + the warm-up request
    refused = _last(prom, 'sum(kvsched:admission_rejections_total{reason="context_length"})')
    assert refused == load.num_refused


def test_alert_rules_evaluate_cleanly_and_stay_quiet(stack: Stack) -> None:
    body = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=10).json()
    rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]
    assert len(rules) >= 6
    assert all(rule["health"] == "ok" for rule in rules), [r for r in rules if r["health"] != "ok"]
    assert all(rule["state"] == "inactive" for rule in rules), [r["name"] for r in rules]
