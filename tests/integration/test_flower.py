"""Flower as docker-compose.yml configures it (its entrypoint, command and environment variables), run for real
against the session's Redis: it refuses requests without the basic-auth pair, and with it shows our node as a
Celery worker consuming its pool's queue."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import embedded, layout
from cluster.settings import Settings
from tests.conftest import skip_or_fail
from tests.helpers import wait_until
from tests.integration.conftest import NodeStarter

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
USER, PASSWORD = "ops", "flower-test-password"


def get(url: str, auth: tuple[str, str] | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def flower(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]["flower"]
    if shutil.which(service["entrypoint"][0]) is None:
        skip_or_fail("no `celery` on PATH")
    try:
        import flower as _flower  # noqa: F401
    except ImportError:
        skip_or_fail("Flower is not installed (`pip install -e '.[dev]'`)")
    port = embedded.free_port()
    argv = [*service["entrypoint"], *service["command"]]
    argv = [a for a in argv if not a.startswith("--port=")] + [f"--port={port}", "--address=127.0.0.1"]
    assert set(service["environment"]) == {"CELERY_BROKER_URL", "FLOWER_BASIC_AUTH"}
    env = {**os.environ, "CELERY_BROKER_URL": settings.redis_url, "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}"}
    log_path = tmp_path_factory.mktemp("flower") / "flower.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"flower exited: {log_path.read_text(errors='replace')[-2000:]}")
        try:
            return get(base + "/healthcheck", None)[0] == 200
        except OSError:
            return False

    try:
        wait_until(answers, 60, "Flower answering")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_flower_requires_basic_auth(flower: str) -> None:
    assert get(flower + "/", None)[0] == 401
    assert get(flower + "/", (USER, "wrong"))[0] == 401
    assert get(flower + "/api/workers", None)[0] == 401
    status, _body = get(flower + "/", (USER, PASSWORD))
    assert status == 200


def test_flower_sees_our_node_on_the_same_redis(flower: str, nodes: NodeStarter, pool: str) -> None:
    # Celery remote control is off on nodes by default (a broadcast could shut them down); Flower's worker
    # view needs it, so an operator who wants that view starts nodes with --remote-control
    node = nodes.start(pool, extra_args=("--remote-control",))
    def workers() -> dict[str, Any] | None:
        status, body = get(flower + "/api/workers?refresh=1", (USER, PASSWORD))
        assert status == 200
        data = json.loads(body)
        return data if any(name.startswith(f"{node.name}@") for name in data) else None

    data = wait_until(workers, 60, f"Flower listing node {node.name}")
    info = next(v for k, v in data.items() if k.startswith(f"{node.name}@"))
    queues = [q["name"] for q in info.get("active_queues", [])]
    assert queues == [layout.queue_name(node.pool)]
