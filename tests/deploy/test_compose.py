"""deploy/compose.yaml (issue 5), checked without a Docker engine: what it points at exists.

CI has no Docker engine (nor the compose plugin), so this follows every reference by hand: the
build context and target, each bind mount, the file paths the containers are told to read, and
the host:port each service reaches another one on. Images are pinned to exact versions.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from service.settings import Settings
from tests.deploy.deploy_support import DEPLOY, ROOT, load_yaml

COMPOSE = DEPLOY / "compose.yaml"


def _services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = load_yaml(COMPOSE)["services"]
    return services


def host_path(service: dict[str, Any], container_path: str) -> Path:
    """The host file a container path resolves to through the service's bind mounts."""
    target = PurePosixPath(container_path)
    for volume in service.get("volumes", []):
        source, mount = str(volume).split(":")[:2]
        if source.startswith(".") and target.is_relative_to(mount):
            return (DEPLOY / source / target.relative_to(mount)).resolve()
    raise AssertionError(f"{container_path} is not under a bind mount")


def test_three_services_and_build_of_the_default_target() -> None:
    services = _services()
    assert set(services) == {"kvsched", "prometheus", "grafana"}
    build = services["kvsched"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert context == ROOT and (context / build["dockerfile"]).is_file()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert build["target"] == stages[-1] == "cpu"


def test_images_are_pinned() -> None:
    for name, service in _services().items():
        if name != "kvsched":
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", service["image"]), service["image"]


def test_bind_mounts_exist() -> None:
    for service in _services().values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), source


def _ports(service: dict[str, Any]) -> set[int]:
    return {int(mapping.rsplit(":", 1)[1]) for mapping in service["ports"]}


def test_prometheus_reads_our_config_and_scrapes_kvsched() -> None:
    services = _services()
    prometheus = services["prometheus"]
    (flag,) = [arg for arg in prometheus["command"] if arg.startswith("--config.file=")]
    config_path = host_path(prometheus, flag.split("=", 1)[1])
    assert config_path == (DEPLOY / "prometheus" / "prometheus.yml").resolve()
    (job,) = load_yaml(config_path)["scrape_configs"]
    (static,) = job["static_configs"]
    (target,) = static["targets"]
    host, port = target.split(":")
    assert host in services and int(port) in _ports(services[host])
    rule_glob = load_yaml(config_path)["rule_files"][0]
    assert list(config_path.parent.glob(rule_glob)), "the rule_files glob matches nothing"


def test_grafana_provisions_the_datasource_and_dashboard() -> None:
    services = _services()
    grafana = services["grafana"]
    datasources = host_path(grafana, "/etc/grafana/provisioning/datasources/prometheus.yaml")
    (source,) = load_yaml(datasources)["datasources"]
    host, port = source["url"].removeprefix("http://").split(":")
    assert host in services and int(port) in _ports(services[host])
    providers = host_path(grafana, "/etc/grafana/provisioning/dashboards/kvsched.yaml")
    (provider,) = load_yaml(providers)["providers"]
    dashboards = host_path(grafana, provider["options"]["path"])
    assert (dashboards / "kvsched.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert host_path(grafana, home).is_file()


def test_kvsched_environment_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [name for name in os.environ if name.startswith("KVSCHED_")]:
        monkeypatch.delenv(name)
    for name, value in _services()["kvsched"]["environment"].items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # type: ignore[call-arg]
    assert settings.workers == 2 and settings.engine == "sim"
