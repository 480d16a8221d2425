"""Static checks of the dashboard's place in the deployment files and the installed package."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_has_a_ui_service_on_loopback_with_a_token() -> None:
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    ui = services["ui"]
    assert ui["command"][0] == "ui" and ui["environment"]["CLUSTER_UI_TOKEN"].startswith("${UI_TOKEN")
    assert "@redis:6379" in ui["environment"]["CLUSTER_REDIS_URL"]  # the shared cluster environment
    assert all(p.startswith("127.0.0.1:") for p in ui["ports"])
    assert "UI_TOKEN=" in (ROOT / "deploy" / "compose.env.example").read_text()


def test_kubernetes_has_a_ui_deployment_and_service() -> None:
    docs = [d for d in yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "cluster.yaml").read_text()) if d]
    ui = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "cluster-ui")
    container = ui["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "ui"
    env = {e["name"]: e for e in container["env"]}
    assert env["CLUSTER_UI_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "ui-token"
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert "ui-token" in secret["stringData"]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "cluster-ui")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"  # not exposed outside the cluster


def test_templates_and_vendored_assets_ship_with_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = pyproject["tool"]["setuptools"]["package-data"]["cluster.ui"]
    assert "templates/*.html" in data and "static/*" in data and "static/vendor/*/*" in data
    ui = ROOT / "cluster" / "ui"
    for lib in ("htmx", "uplot"):
        assert (ui / "static" / "vendor" / lib / "LICENSE").is_file(), f"{lib} ships without its licence"
    assert (ui / "static" / "vendor" / "htmx" / "htmx.min.js").stat().st_size > 10_000
    assert (ui / "static" / "vendor" / "uplot" / "uPlot.iife.min.js").stat().st_size > 10_000
    # works offline: no page or script refers to another host
    for path in [*ui.glob("templates/*.html"), ui / "static" / "app.js", ui / "static" / "app.css"]:
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, path
