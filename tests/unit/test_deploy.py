"""Static checks of the deployment files (no Docker engine or Kubernetes cluster exists here)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_services_and_wiring() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "minio", "controller", "worker"} <= services.keys()
    assert "--appendonly" in services["redis"]["command"] and "--requirepass" in services["redis"]["command"]
    assert services["controller"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["controller"]["command"][0] == "controller"
    env = services["controller"]["environment"]
    assert env["CLUSTER_S3_ENDPOINT"] == "minio:9000" and "@redis:6379" in env["CLUSTER_REDIS_URL"]
    # every ${VAR} the compose file needs is documented in the example env file
    needed = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    example = (ROOT / "deploy" / "compose.env.example").read_text()
    assert needed and all(f"{v}=" in example for v in needed)
    for port in services["minio"]["ports"]:
        assert port.startswith("127.0.0.1:"), "the object store must not listen on every interface by default"


def test_kubernetes_manifests() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "cluster.yaml").read_text()) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Deployment", "cluster-controller") in kinds and ("Role", "cluster-controller") in kinds
    assert ("StatefulSet", "redis") in kinds and ("StatefulSet", "minio") in kinds
    role = next(d for d in docs if d["kind"] == "Role")
    assert {"create", "delete", "list"} <= set(role["rules"][0]["verbs"])
    ctl = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    assert ctl["serviceAccountName"] == "cluster-controller"
    assert ctl["containers"][0]["args"][:3] == ["controller", "--provider", "kubernetes"]
    secret = next(d for d in docs if d["kind"] == "Secret")
    import json

    config = json.loads(secret["stringData"]["config.json"])
    assert {"redis_url", "s3_endpoint", "s3_access_key", "s3_secret_key"} <= config.keys()


def test_dockerfile_installs_the_package() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["cluster"]' in text and "pip install" in text and "USER cluster" in text


def test_nodes_get_least_privileged_credentials_and_a_sandbox() -> None:
    """docs/security.md: nodes hold the `node` Redis user and the `cluster-node` object-store user, never the
    admin credentials; the object store's node policy writes only under experiments/; bubblewrap is installed."""
    import json

    compose_text = (ROOT / "docker-compose.yml").read_text()
    services = yaml.safe_load(compose_text)["services"]
    worker = services["worker"]
    assert "--isolation" in worker["command"] and "required" in worker["command"]
    env = worker["environment"]
    assert env["CLUSTER_REDIS_URL"].startswith("redis://node:") and env["CLUSTER_S3_ACCESS_KEY"] == "cluster-node"
    assert not any(v in str(env) for v in ("${REDIS_PASSWORD", "${MINIO_ROOT"))
    assert any(str(a).startswith("node on >") and "-@dangerous" in str(a) for a in services["redis"]["command"])
    assert "mc admin policy attach local cluster-node" in "".join(services["minio-init"]["command"])
    policy = json.loads((ROOT / "deploy" / "minio-node-policy.json").read_text())
    writes = [s for s in policy["Statement"] if "s3:PutObject" in s["Action"]]
    assert [w["Resource"] for w in writes] == [["arn:aws:s3:::cluster/experiments/*"]]

    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "cluster.yaml").read_text()) if d]
    secret = next(d for d in docs if d["kind"] == "Secret")["stringData"]
    node_config = json.loads(secret["node-config.json"])
    assert node_config["redis_url"].startswith("redis://node:") and node_config["s3_access_key"] == "cluster-node"
    assert json.loads(secret["minio-node-policy.json"]) == policy
    redis = next(d for d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "redis")
    assert "--user" in redis["spec"]["template"]["spec"]["containers"][0]["args"]
    assert ("Job", "minio-init") in {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert "bubblewrap" in (ROOT / "Dockerfile").read_text()
