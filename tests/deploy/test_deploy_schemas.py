"""The deployment files against their schemas, offline, and against each other.

* ``docker-compose.yml`` against the Compose specification's JSON schema (vendored in deploy/schemas/, checked
  with ``check-jsonschema`` as CI would run it);
* every Kubernetes manifest under deploy/kubernetes/, and the node pod the Kubernetes provider renders,
  against the Kubernetes OpenAPI schemas shipped by ``kubernetes-validate`` (strict: unknown fields fail);
* KEDA's ScaledObject is a custom resource ``kubernetes-validate`` has no schema for: it is checked against the
  CRD's own openAPIV3Schema (vendored from kedacore/keda), made strict the same way, plus explicit checks of
  the Prometheus trigger (the CRD types its metadata as a free string map);
* every CLUSTER_* variable a deployment file sets is one the settings know; ports, volumes, names, secrets
  and the metric names (Grafana, KEDA) agree across files.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cluster.settings import ENV_CONFIG, ENV_VARS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"
COMPOSE = ROOT / "docker-compose.yml"
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())  # oldest we claim, newest the package knows
CUSTOM_RESOURCES = {("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "keda-scaledobject-v1alpha1.json"}
METRICS_PORT = 9100


def manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((DEPLOY / "kubernetes").rglob("*.y*ml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc:
                out.append((f"{path.relative_to(ROOT)}#{i}", doc))
    return out


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _w, d in manifests() if d["kind"] == kind}


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def check_jsonschema(schema: Path, *files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--schemafile", str(schema), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


# ---- Compose --------------------------------------------------------------------------------------

def test_compose_file_matches_the_compose_spec() -> None:
    result = check_jsonschema(SCHEMAS / "compose-spec.json", COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_can_fail(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["controller"]["restart"] = ["always"]  # must be a string
    broken["services"]["flower"]["helthcheck"] = {"test": ["CMD", "true"]}  # misspelt key
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = check_jsonschema(SCHEMAS / "compose-spec.json", path)
    assert result.returncode == 1 and "helthcheck" in result.stdout + result.stderr


def test_compose_cross_references() -> None:
    c = compose()
    services, volumes = c["services"], set(c["volumes"])
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown service {dep}"
        for mount in svc.get("volumes", []):
            source = mount.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    assert set(volumes) <= {m.split(":", 1)[0] for s in services.values() for m in s.get("volumes", [])}
    # the optional services stay optional
    assert services["prometheus"]["profiles"] == ["monitoring"] and services["grafana"]["profiles"] == ["monitoring"]
    assert services["flower"]["profiles"] == ["flower"]
    # the controller serves its metrics where Prometheus scrapes them
    ctl = services["controller"]
    assert int(ctl["environment"]["CLUSTER_METRICS_PORT"]) == METRICS_PORT
    assert ctl["command"][ctl["command"].index("--metrics-host") + 1] == "0.0.0.0"
    assert str(METRICS_PORT) in [str(p) for p in ctl["expose"]]
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"controller:{METRICS_PORT}"]
    # Grafana's datasource is the prometheus service; Flower's broker is the redis service, with auth
    ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://prometheus:9090"
    assert "9090:9090" in services["prometheus"]["ports"][0]
    flower = services["flower"]["environment"]
    assert "@redis:6379/0" in flower["CELERY_BROKER_URL"] and "REDIS_PASSWORD" in flower["CELERY_BROKER_URL"]
    assert flower["FLOWER_BASIC_AUTH"].count(":?") == 2, "Flower must not start without credentials"
    assert "GF_SECURITY_ADMIN_PASSWORD" in services["grafana"]["environment"]


# ---- Kubernetes -----------------------------------------------------------------------------------

def _strict(schema: Any) -> Any:
    """A CRD schema as the API server's strict field validation reads it: unknown fields are errors."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (out.get("type") == "object" and "properties" in out and "additionalProperties" not in out
                and not out.get("x-kubernetes-preserve-unknown-fields")):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def validate_custom(doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    assert key in CUSTOM_RESOURCES, f"no schema for custom resource {key}: vendor its CRD schema in deploy/schemas"
    schema = _strict(json.loads(CUSTOM_RESOURCES[key].read_text()))
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)
    meta = doc["metadata"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", meta["name"]) and meta["namespace"] == "cluster"


def validate_k8s(doc: dict[str, Any]) -> None:
    if (doc["apiVersion"], doc["kind"]) in CUSTOM_RESOURCES:
        validate_custom(doc)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize(("where", "doc"), manifests(), ids=[w for w, _d in manifests()])
def test_kubernetes_manifest_matches_its_schema(where: str, doc: dict[str, Any]) -> None:
    validate_k8s(doc)
    if doc["kind"] != "Namespace":
        assert doc["metadata"].get("namespace") == "cluster", f"{where} is not in the cluster namespace"


def test_kubernetes_schema_checks_can_fail() -> None:
    ctl = copy.deepcopy(by_kind("Deployment")["cluster-controller"])
    ctl["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = ["Always"]
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(ctl)
    ctl = copy.deepcopy(by_kind("Deployment")["cluster-controller"])
    ctl["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # misspelt: strict mode rejects it
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(ctl)
    so = copy.deepcopy(by_kind("ScaledObject")["cluster-workers-keda"])
    so["spec"]["maxReplicas"] = 4  # the field is maxReplicaCount
    with pytest.raises(jsonschema.ValidationError):
        validate_k8s(so)
    so = copy.deepcopy(by_kind("ScaledObject")["cluster-workers-keda"])
    del so["spec"]["scaleTargetRef"]
    with pytest.raises(jsonschema.ValidationError):
        validate_k8s(so)


def test_the_node_pod_the_provider_renders_matches_the_pod_schema() -> None:
    from cluster.autoscale import PoolSpec
    from cluster.providers.kubernetes import CONFIG_PATH, KubernetesProvider

    provider = KubernetesProvider(namespace="cluster", image="cluster:latest")
    try:
        for size in ("small", "medium", "large"):
            pod = provider.pod_manifest(PoolSpec(name="Gpu_Pool.v2", vm_size=size), "node-gpu-pool-v2-0123abcd")
            doc = provider.api_client.sanitize_for_serialization(pod)
            validate_k8s(doc)
            env = {e["name"]: e.get("value") for e in doc["spec"]["containers"][0]["env"]}
            assert env[ENV_CONFIG] == CONFIG_PATH
            assert doc["spec"]["volumes"][0]["secret"]["secretName"] in by_kind("Secret")
    finally:
        provider.close()


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"] if "template" in doc.get("spec", {}) else doc.get("spec", {})
    return list(spec.get("containers", []))


def _walk(obj: Any) -> Iterator[Any]:
    yield obj
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v)


def test_kubernetes_cross_references() -> None:
    workloads = {**by_kind("Deployment"), **by_kind("StatefulSet")}
    secrets, configmaps = by_kind("Secret"), by_kind("ConfigMap")
    # every Service selects a workload's pods and targets a port those pods declare
    for name, svc in by_kind("Service").items():
        selected = [w for w in workloads.values()
                    if svc["spec"]["selector"].items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert selected, f"Service {name} selects no pods"
        ports = {p.get("name") for w in selected for c in _containers(w) for p in c.get("ports", [])}
        ports |= {p["containerPort"] for w in selected for c in _containers(w) for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {name} targets {port['targetPort']}, not a pod port"
    # every referenced Secret / ConfigMap key exists (grafana-dashboards is made from the JSON with kubectl)
    made_by_kubectl = {"grafana-dashboards", "prometheus-rules"}
    for w in workloads.values():
        for node in _walk(w):
            if isinstance(node, dict) and "secretKeyRef" in node:
                ref = node["secretKeyRef"]
                assert ref["key"] in secrets[ref["name"]]["stringData"], ref
            if isinstance(node, dict) and "secretName" in node:
                assert node["secretName"] in secrets
            if isinstance(node, dict) and "configMap" in node and isinstance(node["configMap"], dict):
                assert node["configMap"]["name"] in configmaps or node["configMap"]["name"] in made_by_kubectl
    for sub in ("subPath",):
        for node in _walk(by_kind("Deployment")["grafana"]):
            if isinstance(node, dict) and sub in node:
                assert node[sub] in configmaps["grafana-provisioning"]["data"]
    assert "create configmap grafana-dashboards" in (DEPLOY / "kubernetes" / "monitoring" / "grafana.yaml").read_text()
    assert "create configmap grafana-dashboards" in (DEPLOY / "README.md").read_text()
    prometheus = (DEPLOY / "kubernetes" / "monitoring" / "prometheus.yaml").read_text()
    for text in (prometheus, (DEPLOY / "README.md").read_text()):
        assert "create configmap prometheus-rules --from-file=deploy/prometheus/alerts.yml" in text


def test_kubernetes_metrics_prometheus_and_keda_agree() -> None:
    config = json.loads(by_kind("Secret")["cluster-config"]["stringData"]["config.json"])
    assert config["metrics_port"] == METRICS_PORT
    ctl = _containers(by_kind("Deployment")["cluster-controller"])[0]
    assert ctl["args"][ctl["args"].index("--metrics-host") + 1] == "0.0.0.0"
    assert {"name": "metrics", "containerPort": METRICS_PORT} in ctl["ports"]
    svc = by_kind("Service")["cluster-controller-metrics"]
    assert svc["spec"]["ports"][0]["port"] == METRICS_PORT
    prom = yaml.safe_load(by_kind("ConfigMap")["prometheus-config"]["data"]["prometheus.yml"])
    targets = [t for job in prom["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == [f"cluster-controller-metrics.cluster.svc:{METRICS_PORT}"]
    # only Prometheus reaches the metrics port
    policy = by_kind("NetworkPolicy")["cluster-controller-metrics"]["spec"]
    controller_labels = by_kind("Deployment")["cluster-controller"]["spec"]["template"]["metadata"]["labels"]
    prometheus_labels = by_kind("StatefulSet")["prometheus"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= controller_labels.items()
    [rule] = policy["ingress"]
    assert rule["from"][0]["podSelector"]["matchLabels"].items() <= prometheus_labels.items()
    assert rule["ports"] == [{"protocol": "TCP", "port": METRICS_PORT}]
    grafana_ds = yaml.safe_load(by_kind("ConfigMap")["grafana-provisioning"]["data"]["datasources.yml"])
    prom_svc = by_kind("Service")["prometheus"]["spec"]["ports"][0]["port"]
    assert grafana_ds["datasources"][0]["url"] == f"http://prometheus.cluster.svc:{prom_svc}"
    # compose and Kubernetes: the same datasource uid (the dashboard's default), the same ports
    compose_ds = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert grafana_ds["datasources"][0]["uid"] == compose_ds["datasources"][0]["uid"]
    c = compose()["services"]
    assert "6379" in c["controller"]["environment"]["CLUSTER_REDIS_URL"]
    assert by_kind("Service")["redis"]["spec"]["ports"][0]["port"] == 6379
    assert by_kind("Service")["minio"]["spec"]["ports"][0]["port"] == int(
        c["controller"]["environment"]["CLUSTER_S3_ENDPOINT"].rsplit(":", 1)[1])
    assert by_kind("Service")["flower"]["spec"]["ports"][0]["port"] == int(c["flower"]["ports"][0].rsplit(":", 1)[1])
    # Flower: the cluster's Redis, with the cluster's password, behind basic auth
    flower = {e["name"]: e for e in _containers(by_kind("Deployment")["flower"])[0]["env"]}
    assert flower["CELERY_BROKER_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@redis.cluster.svc:6379/0"
    assert list(flower).index("REDIS_PASSWORD") < list(flower).index("CELERY_BROKER_URL")  # $(VAR) order
    assert flower["FLOWER_BASIC_AUTH"]["valueFrom"]["secretKeyRef"]["name"] == "flower-auth"


def test_keda_scales_the_workers_on_live_runs_from_prometheus() -> None:
    so = by_kind("ScaledObject")["cluster-workers-keda"]
    target = so["spec"]["scaleTargetRef"]
    workers = by_kind("Deployment")[target["name"]]
    assert target["kind"] == "Deployment" and workers["spec"]["replicas"] == 0
    args = _containers(workers)[0]["args"]
    pool = args[args.index("--pool") + 1]
    assert args[0] == "worker" and "--managed" not in args  # static nodes: the controller never removes them
    # not selected by the kubernetes provider's label selector, so the controller never deletes them
    from cluster.providers.kubernetes import APP_LABEL, APP_VALUE

    assert workers["spec"]["template"]["metadata"]["labels"].get(APP_LABEL) != APP_VALUE
    [trigger] = so["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "prometheus"  # never the redis (Celery list length) scaler
    assert meta["serverAddress"] == "http://prometheus.cluster.svc:9090"
    assert meta["query"] == f'sum(cluster_runs{{pool="{pool}",status=~"queued|preparing|running|finalizing"}})'
    assert meta["ignoreNullValues"] == "false" and float(meta["threshold"]) == 1
    assert workers["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 600
    assert so["spec"]["minReplicaCount"] <= so["spec"]["maxReplicaCount"]
    assert f"--no-autoscale-pool {pool}" in (DEPLOY / "README.md").read_text()


# ---- variables and metric names -------------------------------------------------------------------

def _deployment_texts() -> dict[str, str]:
    files = [COMPOSE, ROOT / "Dockerfile", *DEPLOY.rglob("*.y*ml"), *DEPLOY.glob("*.example")]
    return {str(f.relative_to(ROOT)): f.read_text() for f in files}


def _read_by_entry_points() -> set[str]:
    """CLUSTER_* variables an entry point reads itself, outside the settings object (a command's own option,
    such as a dashboard token): ``ENV_X = "CLUSTER_..."`` constants and direct environment reads."""
    found: set[str] = set()
    for path in [*(ROOT / "cluster").rglob("*.py"), *(ROOT / "tasks").rglob("*.py")]:
        text = path.read_text()
        found |= set(re.findall(r"^ENV_\w+\s*=\s*[\"'](CLUSTER_\w+)[\"']", text, flags=re.MULTILINE))
        found |= set(re.findall(r"(?:environ\.get\(|getenv\(|environ\[)\s*[\"'](CLUSTER_\w+)[\"']", text))
    return found


def test_every_cluster_variable_in_a_deployment_file_is_a_setting() -> None:
    settings = set(ENV_VARS.values()) | {ENV_CONFIG}
    entry_points = _read_by_entry_points()
    used: dict[str, set[str]] = {}
    for name, text in _deployment_texts().items():
        for var in re.findall(r"\bCLUSTER_[A-Z0-9_]+\b", text):
            used.setdefault(var, set()).add(name)
    assert {"CLUSTER_REDIS_URL", "CLUSTER_CONFIG", "CLUSTER_METRICS_PORT"} <= used.keys()
    unknown = {v: sorted(f) for v, f in used.items() if v not in settings | entry_points}
    assert not unknown, f"CLUSTER_* variables neither the settings nor an entry point read: {unknown}"
    # the connection settings every role needs are Settings fields, never read on the side
    compose_env = compose()["x-cluster-env"]
    assert set(compose_env) <= settings


def test_the_variable_check_can_fail() -> None:
    assert "CLUSTER_REDIS_URI" not in set(ENV_VARS.values()) | _read_by_entry_points()  # a typo is caught
    assert "CLUSTER_POOL" not in _read_by_entry_points()  # set for node pods, read by no one


def test_the_rendered_node_pod_sets_only_known_variables() -> None:
    from cluster.autoscale import PoolSpec
    from cluster.providers.kubernetes import KubernetesProvider

    with KubernetesProvider(namespace="cluster") as provider:
        pod = provider.pod_manifest(PoolSpec(name="cpu"), "node-cpu-0123abcd")
    names = {e.name for e in pod.spec.containers[0].env}
    informational = {"CLUSTER_POOL", "CLUSTER_NODE_NAME"}  # the node's identity, for `kubectl exec ... env`
    assert names - informational <= set(ENV_VARS.values()) | {ENV_CONFIG}


def _exposed_metric_names() -> set[str]:
    from prometheus_client import CollectorRegistry

    from cluster.telemetry import Telemetry

    class _R:
        def xrevrange(self, *_a: Any, **_k: Any) -> list[Any]:
            return []

    class _WS:
        redis = _R()

    reg = CollectorRegistry()
    Telemetry(_WS(), registry=reg)  # type: ignore[arg-type]
    names = {m.name for m in reg.collect()}  # the counters/histograms (the collector yields nothing here)
    names |= {"cluster_runs", "cluster_pool_nodes", "cluster_pool_desired_nodes", "cluster_pool_node_bounds",
              "cluster_pool_autoscaled", "cluster_sweep_children", "cluster_controller_leader",
              "cluster_metrics_state_ok"}  # the scrape-time gauges (checked live in tests/integration)
    return names


def _series(names: set[str]) -> set[str]:
    suffixes = ("", "_total", "_bucket", "_count", "_sum")
    return {n + s for n in names for s in suffixes}


def test_dashboard_and_keda_use_only_metrics_the_controller_exposes() -> None:
    series = _series(_exposed_metric_names())
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "cluster.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 10
    used = {m for e in exprs for m in re.findall(r"\bcluster_[a-z_]+", e)}
    assert used and used <= series, used - series
    for must in ("cluster_runs", "cluster_pool_nodes", "cluster_run_duration_seconds_bucket",
                 "cluster_runs_finished_total", "cluster_node_lost_total"):
        assert must in used, f"the dashboard shows no {must}"
    panel_sources = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert panel_sources == {"${datasource}"}
    keda = by_kind("ScaledObject")["cluster-workers-keda"]["spec"]["triggers"][0]["metadata"]["query"]
    assert set(re.findall(r"\bcluster_[a-z_]+", keda)) <= series
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for rule in alerts["groups"][0]["rules"]:
        names = set(re.findall(r"\bcluster_[a-z_]+", rule["expr"]))
        assert names and names <= series, (rule["alert"], names - series)


def test_every_metric_is_documented() -> None:
    docs = (ROOT / "docs" / "operations.md").read_text()
    for name in _exposed_metric_names():
        shown = name + "_total" if f"{name}_total" in docs else name
        assert f"`{shown}" in docs, f"{name} is not in docs/operations.md"


def test_prometheus_configs_pass_promtool(tmp_path: Path) -> None:
    import shutil

    from tests.conftest import skip_or_fail

    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("no `promtool` (Debian package `prometheus`)")
    k8s = tmp_path / "kubernetes-prometheus.yml"
    k8s.write_text(by_kind("ConfigMap")["prometheus-config"]["data"]["prometheus.yml"])
    for config in (DEPLOY / "prometheus" / "prometheus.yml", k8s):
        result = subprocess.run([str(promtool), "check", "config", str(config)], capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    for args in (["check", "rules", str(DEPLOY / "prometheus" / "alerts.yml")],
                 ["test", "rules", str(DEPLOY / "prometheus" / "alerts.test.yml")]):  # the alerts fire when due
        result = subprocess.run([str(promtool), *args], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text("scrape_configs:\n  - job_name: x\n    scrape_interval: every minute\n")
    assert subprocess.run([str(promtool), "check", "config", str(broken)], capture_output=True,
                          timeout=60).returncode != 0
