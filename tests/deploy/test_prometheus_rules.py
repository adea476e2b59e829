"""Prometheus config and alert rules (issue 5): promtool checks and unit tests, coverage of alerts.

promtool comes from Debian's `prometheus` package (.ci/deploy-tools.sh); without it these tests
fail. Beyond promtool: every alert the issue asks for exists, carries a runbook line, and has a
unit test that expects it to fire; and every series the rules, the dashboard and the autoscaling
adapter read is one `kvsched serve` really exposes (a typo would otherwise pass promtool tests,
whose input series are written by hand).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.deploy_support import (
    DASHBOARD,
    DEPLOY,
    RULES,
    exposed_series,
    load_yaml,
    metric_names,
    require_tool,
    run_tool,
)

PROMETHEUS = DEPLOY / "prometheus"
UNIT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yaml"))
ADAPTER = DEPLOY / "k8s" / "components" / "autoscaling" / "prometheus-adapter-values.yaml"
# the alert list, in its order
REQUIRED_ALERTS = (
    "KvschedQueueGrowing",
    "KvschedKVCacheSaturated",
    "KvschedEvictionStorm",
    "KvschedIntervalMissesHigh",
    "KvschedTTFTP99High",
    "KvschedNoReadyWorkers",
)


def _alerts() -> list[dict[str, Any]]:
    groups = load_yaml(RULES)["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_a_missing_tool_fails_and_names_the_installer() -> None:
    with pytest.raises(pytest.fail.Exception, match=r"\.ci/deploy-tools\.sh"):
        require_tool("promtool-not-installed")
    require_tool("promtool")  # and the real one is there


def test_promtool_check_config() -> None:
    result = run_tool("promtool", "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout  # the config really loads our rules


def test_promtool_check_rules() -> None:
    result = run_tool("promtool", "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(_alerts())} rules found" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    assert UNIT_TESTS, "no promtool unit tests in deploy/prometheus/tests"
    result = run_tool("promtool", "test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_required_alert_exists_with_runbook_and_severity() -> None:
    alerts = {rule["alert"]: rule for rule in _alerts()}
    assert set(REQUIRED_ALERTS) <= set(alerts), set(REQUIRED_ALERTS) - set(alerts)
    for name, rule in alerts.items():
        annotations, labels = rule.get("annotations", {}), rule.get("labels", {})
        assert len(annotations.get("runbook", "")) > 40, f"{name}: no runbook line"
        assert "\n" not in annotations["runbook"], f"{name}: runbook is one line"
        assert annotations.get("summary"), f"{name}: no summary"
        assert labels.get("severity") in ("warning", "critical"), f"{name}: severity"


def _alert_tests(path: Path) -> list[dict[str, Any]]:
    return [case for test in load_yaml(path)["tests"] for case in test["alert_rule_test"]]


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    cases = [case for path in UNIT_TESTS for case in _alert_tests(path)]
    for name in (rule["alert"] for rule in _alerts()):
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no test where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no quiet test"


def _dashboard_exprs() -> list[str]:
    def walk(panels: list[dict[str, Any]]) -> list[str]:
        exprs = []
        for panel in panels:
            exprs += [target["expr"] for target in panel.get("targets", [])]
            exprs += walk(panel.get("panels", []))
        return exprs

    dashboard = json.loads(DASHBOARD.read_text())
    variables = [
        var["definition"] for var in dashboard["templating"]["list"] if "definition" in var
    ]
    return walk(dashboard["panels"]) + variables


def _adapter_series() -> list[str]:
    rules = load_yaml(ADAPTER)["rules"]["custom"]
    return [rule["seriesQuery"] for rule in rules]


def test_rules_dashboard_and_adapter_read_only_exposed_series() -> None:
    exposed = exposed_series()
    sources = {
        "rules": [rule["expr"] for rule in _alerts()],
        "dashboard": _dashboard_exprs(),
        "adapter": _adapter_series(),
    }
    for where, exprs in sources.items():
        used = set().union(*(metric_names(expr) for expr in exprs))
        assert used, f"{where}: reads no kvsched series"
        assert used <= exposed, f"{where} reads series kvsched does not expose: {used - exposed}"


def test_adapter_serves_the_metric_the_hpa_scales_on() -> None:
    (rule,) = load_yaml(ADAPTER)["rules"]["custom"]
    (series,) = metric_names(rule["seriesQuery"])
    pattern = rule["name"]["matches"]
    adapted = re.sub(pattern, rule["name"]["as"].replace("${1}", r"\1"), series)
    hpa = load_yaml(DEPLOY / "k8s" / "components" / "autoscaling" / "hpa.yaml")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == adapted
    assert series == "kvsched:num_requests_waiting"  # the issue: scale on queue depth
