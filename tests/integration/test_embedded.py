"""The embedded cluster with real servers: up, status, idempotence, down, data survival, errors."""

from __future__ import annotations

import json
import socket
import stat
from pathlib import Path

import psutil
import pytest

from cluster import embedded
from cluster.cli import main
from cluster.errors import CredentialsError, PortInUseError, ServiceError
from cluster.objectstore import ObjectStore
from cluster.redisclient import connect
from cluster.settings import Settings

pytestmark = pytest.mark.integration


def test_config_is_private_and_masked(cluster_dir: Path, settings: Settings, capsys: pytest.CaptureFixture) -> None:
    cfg = cluster_dir / "config.json"
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert settings.s3_secret_key not in repr(settings)
    assert main(["status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and settings.s3_secret_key not in out
    password = json.loads(cfg.read_text())["redis_password"]
    assert password not in out


def test_up_is_idempotent(cluster_dir: Path) -> None:
    before = embedded.State.load(cluster_dir).processes
    lines: list[str] = []
    embedded.up(cluster_dir, echo=lines.append)
    assert "already running" in lines[0]
    assert [p.pid for p in embedded.State.load(cluster_dir).processes] == [p.pid for p in before]


def test_redis_requires_password_and_persists(settings: Settings) -> None:
    import redis

    url = settings.redis_url.split("@", 1)[1]
    anon = redis.Redis.from_url(f"redis://{url}")
    with pytest.raises(redis.AuthenticationError):
        anon.ping()
    client = connect(settings)
    assert client.config_get("appendonly")["appendonly"] == "yes"
    assert client.config_get("bind")["bind"] == "127.0.0.1"


def test_wrong_credentials_are_clear(settings: Settings) -> None:
    from dataclasses import replace

    bad = replace(settings, s3_secret_key="not-the-secret")
    with pytest.raises(CredentialsError, match="rejected our credentials"):
        ObjectStore(bad, bad.cluster_bucket).ping()
    bad_redis = replace(settings, redis_url=settings.redis_url.replace("://:", "://:x"))
    with pytest.raises(CredentialsError, match="password"):
        connect(bad_redis)


def test_server_down_is_clear(settings: Settings) -> None:
    from dataclasses import replace

    port = embedded.free_port()
    gone = replace(settings, s3_endpoint=f"127.0.0.1:{port}", redis_url=f"redis://:x@127.0.0.1:{port}/0")
    with pytest.raises(ServiceError, match="not reachable"):
        ObjectStore(gone, gone.cluster_bucket).ping()
    with pytest.raises(ServiceError, match="not reachable"):
        connect(gone)


def test_port_in_use_is_named(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortInUseError, match=str(port)):
            embedded.up(tmp_path / ".cluster", redis_port=port, echo=lambda _m: None)
        assert main(["up", "--state-dir", str(tmp_path / "c2"), "--redis-port", str(port)]) == 3


def test_down_stops_only_ours_and_data_survives(tmp_path: Path) -> None:
    state_dir = tmp_path / ".cluster"
    settings = embedded.up(state_dir, echo=lambda _m: None)
    ObjectStore(settings, settings.data_bucket).put_bytes("keep/me.txt", b"still here")
    connect(settings).set("cluster:test:key", "value")
    assert embedded.start_workers(state_dir, "downtest", 1) == ["node-downtest-1"]
    procs = embedded.State.load(state_dir).processes
    # (the controller may also have started a warm spare node process by now: `spare-...`)
    assert {p.name for p in procs if not p.name.startswith("spare-")} == {"redis", "s3", "controller", "ui",
                                                                          "node-downtest-1"}
    pids = [p.pid for p in procs]
    bystander = psutil.Popen(["sleep", "30"])  # not ours: must survive `down`
    try:
        stopped = embedded.down(state_dir, echo=lambda _m: None)
        assert sorted(n for n in stopped if not n.startswith("spare-")) == ["controller", "node-downtest-1", "redis",
                                                                             "s3", "ui"]
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids)
        assert bystander.is_running()
        again = embedded.up(state_dir, echo=lambda _m: None)
        assert again.s3_access_key == settings.s3_access_key
        assert ObjectStore(again, again.data_bucket).get_bytes("keep/me.txt") == b"still here"
        assert connect(again).get("cluster:test:key") == "value"
    finally:
        bystander.kill()
        bystander.wait()
        embedded.down(state_dir, echo=lambda _m: None)


@pytest.mark.parametrize("victim", ["s3", "redis"])
def test_up_restarts_only_the_service_that_died(tmp_path: Path, victim: str, capsys: pytest.CaptureFixture) -> None:
    """A dead server is brought back on the same port with the same credentials and data; nothing else is
    restarted (nodes and the controller keep running and reconnect by themselves)."""
    state_dir = tmp_path / ".cluster"
    settings = embedded.up(state_dir, echo=lambda _m: None, ui=False)
    try:
        ObjectStore(settings, settings.data_bucket).put_bytes("keep/me.txt", b"still here")
        client = connect(settings)
        client.set("cluster:test:key", "value")
        client.execute_command("BGREWRITEAOF")  # (everysec: the key reaches the AOF within a second anyway)
        before = {p.name: p.pid for p in embedded.State.load(state_dir).processes if p.alive}
        dead = embedded.running_process(state_dir, victim)
        assert dead is not None
        proc = psutil.Process(dead.pid)
        if victim == "redis":
            import time

            time.sleep(1.5)  # past appendfsync everysec
        proc.kill()
        proc.wait(10)
        assert main(["status", "--config", str(state_dir / "config.json")]) == 3
        out = capsys.readouterr().out
        assert "DOWN" in out and "down: " in out and "restarts only what is down" in out
        messages: list[str] = []
        again = embedded.up(state_dir, echo=messages.append, ui=False)
        assert any(f"{victim} was down: restarted it on the same port" in m for m in messages), messages
        after = {p.name: p.pid for p in embedded.State.load(state_dir).processes if p.alive}
        assert after[victim] != before[victim]
        assert {n: pid for n, pid in after.items() if n != victim and n in before} == \
               {n: pid for n, pid in before.items() if n != victim}  # the survivors were left alone
        assert (again.redis_url, again.s3_endpoint, again.s3_access_key, again.s3_secret_key) == \
               (settings.redis_url, settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)
        assert ObjectStore(again, again.data_bucket).get_bytes("keep/me.txt") == b"still here"
        assert connect(again).get("cluster:test:key") == "value"
        assert main(["status", "--config", str(state_dir / "config.json")]) == 0
    finally:
        embedded.down(state_dir, echo=lambda _m: None)
