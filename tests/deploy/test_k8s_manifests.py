"""Kubernetes manifests (issue 5): every overlay renders and every object is valid and coherent.

`kubectl kustomize` renders each overlay (kubectl missing = failure, not a skip); core objects
validate against the Kubernetes OpenAPI schema bundled in kubernetes-validate (offline, strict:
unknown fields are errors); Prometheus Operator CRDs against `crd_schemas`. Then the objects must
agree with each other (selectors, ports, names) and with kvsched (probe routes, settings).
"""

from __future__ import annotations

import base64
import functools
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped, unused-ignore]
import pytest

from service.http.routes import router
from service.settings import Settings
from tests.deploy.crd_schemas import SCHEMAS
from tests.deploy.deploy_support import DEPLOY, INSTALL_HINT, ROOT, RULES, load_yaml, run_tool
from tests.deploy.deploy_support import yaml_docs as parse_docs

try:
    import kubernetes_validate  # type: ignore[import-untyped, unused-ignore]
except ImportError:  # pragma: no cover - the failure below names the fix
    kubernetes_validate = None

K8S = DEPLOY / "k8s"
OVERLAYS = sorted(p.parent.name for p in (K8S / "overlays").glob("*/kustomization.yaml"))
KUBE_VERSION = "1.32"  # the kubectl on the CI machines; kubernetes-validate bundles its schema
Obj = dict[str, Any]


def _validator() -> Any:
    if kubernetes_validate is None:
        pytest.fail(f"kubernetes-validate is not installed: {INSTALL_HINT}")
    return kubernetes_validate


@functools.cache
def rendered(overlay: str) -> tuple[Obj, ...]:
    result = run_tool("kubectl", "kustomize", str(K8S / "overlays" / overlay))
    assert result.returncode == 0, f"kubectl kustomize {overlay}: {result.stderr}"
    return tuple(parse_docs(result.stdout))


def of_kind(objs: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [obj for obj in objs if obj["kind"] == kind]


def one(objs: tuple[Obj, ...], kind: str) -> Obj:
    (obj,) = of_kind(objs, kind)
    return obj


def schema_errors(obj: Obj) -> list[str]:
    """Why `obj` is invalid ([] when valid): Kubernetes schema, or ours for the CRDs."""
    if obj["kind"] in SCHEMAS:
        validator = jsonschema.Draft202012Validator(SCHEMAS[obj["kind"]])
        return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(obj)]
    kv = _validator()
    try:
        kv.validate(obj, KUBE_VERSION, strict=True)
    except kv.ValidationError as exc:
        return [f"{'.'.join(map(str, exc.path))}: {exc.message}"]
    except kv.SchemaNotFoundError as exc:
        return [exc.message]
    return []


def test_the_issue_overlays_exist() -> None:
    assert {"cpu-sim", "gpu"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates(overlay: str) -> None:
    objs = rendered(overlay)
    problems = [f"{o['kind']}/{o['metadata']['name']}: {e}" for o in objs for e in schema_errors(o)]
    assert not problems, "\n".join(problems)
    namespace = one(objs, "Namespace")["metadata"]["name"]
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == namespace, obj["metadata"]["name"]


def test_the_validators_reject_typos() -> None:
    """The checks above can fail: a misspelt field is an error in both validators."""
    deployment = one(rendered("cpu-sim"), "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    assert schema_errors(deployment) == [] and schema_errors(broken)
    monitor = one(rendered("gpu"), "ServiceMonitor")
    endpoint = {**monitor["spec"]["endpoints"][0], "intervall": "15s"}
    broken = {**monitor, "spec": {**monitor["spec"], "endpoints": [endpoint]}}
    assert schema_errors(monitor) == [] and schema_errors(broken)


def _subset(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def _names(objs: tuple[Obj, ...], kind: str) -> set[str]:
    return {obj["metadata"]["name"] for obj in of_kind(objs, kind)}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_reference_each_other(overlay: str) -> None:
    objs = rendered(overlay)
    deployment, service = one(objs, "Deployment"), one(objs, "Service")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert _subset(deployment["spec"]["selector"]["matchLabels"], labels)
    assert _subset(service["spec"]["selector"], labels)
    assert _subset(one(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    assert _subset(one(objs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"], labels)
    (container,) = pod["spec"]["containers"]
    port_names = {port["name"] for port in container["ports"]}
    assert {port["targetPort"] for port in service["spec"]["ports"]} <= port_names
    volumes = pod["spec"]["volumes"]
    secrets = {v["secret"]["secretName"] for v in volumes if "secret" in v}
    claims = {
        v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v
    }
    config_maps = {ref["configMapRef"]["name"] for ref in container["envFrom"]}
    assert secrets and secrets <= _names(objs, "Secret")
    assert config_maps and config_maps <= _names(objs, "ConfigMap")
    assert claims <= _names(objs, "PersistentVolumeClaim")
    for hpa in of_kind(objs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
        assert "replicas" not in deployment["spec"], "the HPA owns replicas"
    for monitor in of_kind(objs, "ServiceMonitor"):
        service_labels = service["metadata"]["labels"]
        assert _subset(monitor["spec"]["selector"]["matchLabels"], service_labels)
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {
            p["name"] for p in service["spec"]["ports"]
        }
        assert service_labels[monitor["spec"]["jobLabel"]] == "kvsched"  # rules: job="kvsched"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_port_match_the_server(overlay: str) -> None:
    (container,) = one(rendered(overlay), "Deployment")["spec"]["template"]["spec"]["containers"]
    routes = {getattr(route, "path", None) for route in router.routes}
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in routes
        assert container[probe]["httpGet"]["port"] == "http"
    env = {item["name"]: item["value"] for item in container["env"]}
    (http,) = [port for port in container["ports"] if port["name"] == "http"]
    assert http["containerPort"] == int(env["KVSCHED_PORT"]) and env["KVSCHED_HOST"] == "0.0.0.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_settings_are_valid_for_kvsched(
    overlay: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The pod's KVSCHED_* environment (ConfigMap + env + Secret file) is accepted by Settings."""
    objs = rendered(overlay)
    (container,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    config_maps = {c["metadata"]["name"].rsplit("-", 1)[0]: c for c in of_kind(objs, "ConfigMap")}
    env = dict(config_maps["kvsched-settings"]["data"])
    env.update({item["name"]: item["value"] for item in container["env"]})
    keys_file = tmp_path / "api-keys"
    keys_file.write_bytes(base64.b64decode(one(objs, "Secret")["data"]["api-keys"]))
    env["KVSCHED_API_KEYS_FILE"] = str(keys_file)
    if "KVSCHED_PLAN" in env:  # the plan ConfigMap's file, where the pod mounts it
        plan = tmp_path / Path(env["KVSCHED_PLAN"]).name
        plan.write_text(config_maps["kvsched-plan"]["data"][plan.name])
        env["KVSCHED_PLAN"] = str(plan)
    for name in [name for name in os.environ if name.startswith("KVSCHED_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        assert name.startswith("KVSCHED_"), name
        monkeypatch.setenv(name, value)
    settings = Settings()  # type: ignore[call-arg]
    assert settings.port == 8000 and settings.all_api_keys() == frozenset()
    assert settings.engine == ("hf" if overlay == "gpu" else "sim")
    if overlay == "cpu-sim-waa":  # the plan's WAA roles reach the server's settings
        assert settings.plan is not None and settings.workers == 4
        assert settings.prefill_workers == 3


def test_plan_component_mounts_the_plan_where_the_settings_point() -> None:
    objs = rendered("cpu-sim-waa")
    spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "plan"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "plan"]
    names = {cm["metadata"]["name"] for cm in of_kind(objs, "ConfigMap")}
    assert volume["configMap"]["name"] in names  # the generated (hashed) name
    settings_map = [cm for cm in of_kind(objs, "ConfigMap") if "KVSCHED_PLAN" in cm["data"]]
    (plan_path,) = [cm["data"]["KVSCHED_PLAN"] for cm in settings_map]
    assert Path(plan_path).parent == Path(mount["mountPath"])


def _gpus(overlay: str) -> dict[str, str]:
    (container,) = one(rendered(overlay), "Deployment")["spec"]["template"]["spec"]["containers"]
    resources = container["resources"]
    assert resources["requests"] and resources["limits"]
    return {part: resources[part].get("nvidia.com/gpu", "0") for part in ("requests", "limits")}


def test_gpu_overlay_requests_gpus_and_cpu_sim_does_not() -> None:
    assert _gpus("gpu") == {"requests": "1", "limits": "1"}
    assert _gpus("cpu-sim") == {"requests": "0", "limits": "0"}


def test_prometheus_rule_holds_the_rules_file() -> None:
    rule = one(rendered("gpu"), "PrometheusRule")
    assert rule["spec"]["groups"] == load_yaml(RULES)["groups"]


def test_images_are_the_package_version_and_the_dockerfile_user() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    users = re.findall(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    for overlay, tag in (("cpu-sim", version), ("gpu", f"{version}-gpu")):
        pod = one(rendered(overlay), "Deployment")["spec"]["template"]["spec"]
        assert pod["containers"][0]["image"] == f"kvsched:{tag}"
        context = pod["securityContext"]
        assert context["runAsNonRoot"] and users
        assert {(str(context["runAsUser"]), str(context["runAsGroup"]))} == set(users)
