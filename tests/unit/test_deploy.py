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
