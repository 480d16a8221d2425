"""Runs submitted from one host complete on nodes on other hosts; every byte crosses a network, over TLS."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from cluster import layout
from tests.helpers import wait_until
from tests.multihost.conftest import POOL, PY, MultiHost

pytestmark = pytest.mark.multihost
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sklearn-mnist" / "sklearn-mnist"


def test_servers_listen_on_the_infra_address_with_tls_only(multihost: MultiHost) -> None:
    infra = multihost["infra"]
    s = multihost.settings
    assert s.redis_url.startswith("rediss://:") and f"@{infra.address}:" in s.redis_url
    assert s.s3_secure and s.s3_endpoint.startswith(f"{infra.address}:") and "BEGIN CERTIFICATE" in s.tls_ca
    listening = infra.run(["ss", "-Hltn"]).stdout
    redis_port, s3_port = s.redis_url.rsplit(":", 1)[1].split("/")[0], s.s3_endpoint.rsplit(":", 1)[1]
    for port in (redis_port, s3_port):
        assert f"{infra.address}:{port} " in listening, listening
    # a plain-text client is refused by both (TLS only): no password or key ever crosses in clear
    plain = multihost["client"].run([PY, "-c", (
        "import socket,sys\n"
        f"s=socket.create_connection(('{infra.address}',{redis_port}),timeout=5)\n"
        "s.sendall(b'PING\\r\\n'); s.settimeout(5)\n"
        "try:\n    data=s.recv(100)\nexcept OSError as e:\n    data=b''\n"
        "print(repr(data))\n")])
    assert "PONG" not in plain.stdout
    http = multihost["client"].run([PY, "-c", (
        "import urllib.request,urllib.error\n"
        "try:\n"
        f"    urllib.request.urlopen('http://{s.s3_endpoint}/', timeout=5)\n"
        "except urllib.error.HTTPError as e:\n"
        "    print(e.code, e.read().decode(errors='replace'))\n")])
    assert "HTTP request to an HTTPS server" in http.stdout, http.stdout
    # the S3 gateway's gRPC port also listens on the address: it demands a client certificate nobody has
    grpc_port = json.loads((infra.root / ".cluster" / "state.json").read_text())["ports"]["s3_grpc"]
    assert f"{infra.address}:{grpc_port} " in listening, listening
    probe = multihost["client"].run([PY, "-c", (
        "import json,socket,ssl\n"
        "ctx=ssl.create_default_context(cadata=json.load(open('.cluster/config.json'))['tls_ca'])\n"
        f"s=ctx.wrap_socket(socket.create_connection(('{infra.address}',{grpc_port}),timeout=5),"
        f"server_hostname='{infra.address}')\n"
        "try:\n    s.sendall(b'PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n'); print('answered', s.recv(64))\n"
        "except ssl.SSLError as e:\n    print('refused', e)\n")])
    assert "CERTIFICATE_REQUIRED" in probe.stdout, probe.stdout


def test_nodes_on_their_hosts_show_in_cluster_nodes(multihost: MultiHost) -> None:
    live = multihost.wait_nodes("n1", "n2")
    for host in ("n1", "n2"):
        assert live[host]["address"] == multihost[host].address
        assert live[host]["static"] == "1"
        assert live[host]["name"].startswith(f"{POOL}-{host}-")  # default name: <pool>-<host>-<pid>
    table = multihost["client"].run([PY, "-m", "cluster.cli", "nodes"]).stdout
    for host in ("n1", "n2"):
        assert f"{host} ({multihost[host].address})" in table, table


def test_tutorial_run_and_sweep_from_the_client_host(multihost: MultiHost, mnist_uploaded: str) -> None:
    out = multihost.client("tutorial.py", POOL, str(EXAMPLE), timeout=600)
    run = out["run"]
    d = run["details"]
    assert d["status"] == "Completed", d
    assert d["host"] in ("n1", "n2") and d["node"].startswith(f"{POOL}-{d['host']}-"), d
    assert run["metrics"]["regularization rate"] == 0.8 and 0.7 < run["metrics"]["accuracy"] <= 1.0
    assert "outputs/sklearn_mnist_model.pkl" in run["files"]
    sweep = out["sweep"]
    assert sweep["status"] == "Completed", sweep
    assert len(sweep["children"]) == 2 and all(c["status"] == "Completed" for c in sweep["children"])
    assert {c["details"]["host"] for c in sweep["children"]} <= {"n1", "n2"}
    assert sweep["best"] in {c["id"] for c in sweep["children"]}


def test_a_node_joins_from_its_file_and_leaves_cleanly(multihost: MultiHost) -> None:
    n2 = multihost["n2"]
    proc = n2.start([PY, "-m", "cluster.cli", "worker", "--config", "config.json", "--pool", POOL,
                     "--node-name", "extra-n2", "--work-dir", "work-extra", "--cache-dir", "cache-extra"], "extra.log")
    r = multihost.ws.redis
    key = layout.rk_node("extra-n2")
    wait_until(lambda: r.hget(key, "host") == "n2" or proc.poll() is not None, 60, "the extra node's heartbeat")
    assert proc.poll() is None, n2.log("extra.log")
    assert r.hget(key, "address") == n2.address
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, n2.log("extra.log")
    assert not r.exists(key) and not r.sismember(layout.RK_NODES, "extra-n2")


def test_a_host_sees_no_other_hosts_files(multihost: MultiHost) -> None:
    infra_state = multihost["infra"].root / ".cluster"
    assert (infra_state / "config.json").is_file()  # the harness sees it ...
    for host in ("n1", "client", "ctl"):
        out = multihost[host].run([PY, "-c", (
            "import os,sys,json\n"
            f"print(json.dumps({{'infra': os.listdir({str(multihost['infra'].root)!r}), "
            f"'n2': os.listdir({str(multihost['n2'].root)!r}), 'own': sorted(os.listdir('.'))}}))\n")])
        seen = json.loads(out.stdout)
        assert seen["infra"] == [] and seen["n2"] == [], seen  # ... no host does: not the CA key, not a password
        assert ("config.json" in seen["own"]) or (".cluster" in seen["own"]), seen


def test_cluster_status_on_the_client_host(multihost: MultiHost) -> None:
    out = multihost["client"].run([PY, "-m", "cluster.cli", "status"])  # .cluster/config.json in its folder
    lines = out.stdout.splitlines()
    assert any(line.split()[:2] == ["ok", "redis"] and "rediss://" in line for line in lines), out.stdout
    assert any("s3:cluster" in line and line.split()[0] == "ok" and "https://" in line for line in lines), out.stdout
    assert "DOWN" not in out.stdout
