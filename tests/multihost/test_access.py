"""Hosts without the right credentials, or without the cluster's CA, get clear errors (and reach nothing)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.multihost.conftest import POOL, PY, MultiHost

pytestmark = pytest.mark.multihost
PROBE = str(Path(__file__).parent / "scripts" / "probe.py")


def _variant(mh: MultiHost, host: str, name: str, change: Callable[[dict[str, Any]], None]) -> str:
    """A copy of the host's own config with one thing changed, written in that host's folder."""
    own = mh[host].root / (".cluster/config.json" if host == "client" else "config.json")
    data = json.loads(own.read_text())
    change(data)
    (mh[host].root / name).write_text(json.dumps(data))
    return name


def _probe(mh: MultiHost, host: str, config: str) -> dict[str, Any]:
    return json.loads(mh[host].run([PY, PROBE, config]).stdout.strip().splitlines()[-1])


def test_the_hosts_own_config_works(multihost: MultiHost) -> None:
    assert _probe(multihost, "client", ".cluster/config.json") == {"error": None}


def test_wrong_redis_password_is_a_credentials_error(multihost: MultiHost) -> None:
    def bad(d: dict[str, Any]) -> None:
        d["redis_url"] = d["redis_url"].replace("rediss://:", "rediss://:x", 1)

    out = _probe(multihost, "client", _variant(multihost, "client", "bad-redis.json", bad))
    assert out["error"] == "CredentialsError" and "ClusterError" in out["bases"], out
    assert "rejected the password" in out["message"] and "bad-redis.json" in out["hint"], out


def test_wrong_s3_secret_is_a_credentials_error(multihost: MultiHost) -> None:
    def bad(d: dict[str, Any]) -> None:
        d["s3_secret_key"] = "0" * len(d["s3_secret_key"])

    out = _probe(multihost, "client", _variant(multihost, "client", "bad-s3.json", bad))
    assert out["error"] == "CredentialsError", out
    assert "rejected our credentials" in out["message"] and "access/secret key" in out["hint"], out


def test_a_host_without_the_ca_gets_a_tls_error(multihost: MultiHost) -> None:
    out = _probe(multihost, "client", _variant(multihost, "client", "no-ca.json", lambda d: d.pop("tls_ca")))
    assert out["error"] == "TLSError" and "ServiceError" in out["bases"], out
    assert "certificate this host does not trust" in out["message"], out
    assert "cluster config export" in out["hint"] and "tls_ca" in out["hint"], out


def test_a_node_without_the_ca_refuses_to_start_and_says_why(multihost: MultiHost) -> None:
    config = _variant(multihost, "n2", "no-ca.json", lambda d: d.pop("tls_ca"))
    out = multihost["n2"].run([PY, "-m", "cluster.cli", "worker", "--config", config, "--pool", POOL,
                               "--work-dir", "work-noca", "--cache-dir", "cache-noca"], check=False, timeout=60)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "certificate this host does not trust" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert "cluster config export" in out.stderr


def test_a_node_config_carries_no_admin_secret(multihost: MultiHost) -> None:
    node = json.loads((multihost["n1"].root / "config.json").read_text())
    admin = multihost.settings
    assert node["redis_url"].startswith("rediss://node:") and node["s3_access_key"] != admin.s3_access_key
    text = json.dumps(node)
    assert admin.s3_secret_key not in text and admin.redis_url.split("@")[0].rsplit(":", 1)[1] not in text
    assert node["tls_ca"] == admin.tls_ca


def test_insecure_listen_warns_and_serves_plain_text(multihost: MultiHost) -> None:
    ctl = multihost["ctl"]
    up = ctl.run([PY, "-m", "cluster.cli", "up", "--state-dir", "insecure", "--listen", ctl.address, "--insecure",
                  "--no-controller", "--no-ui"], timeout=120)
    try:
        assert "WARNING" in up.stdout and "WITHOUT TLS" in up.stdout, up.stdout
        assert f"redis://:****@{ctl.address}:" in up.stdout and f"http://{ctl.address}:" in up.stdout, up.stdout
        config = json.loads((ctl.root / "insecure" / "config.json").read_text())
        assert config["listen"] == ctl.address and config["insecure"] is True and not config.get("tls_ca")
    finally:
        ctl.run([PY, "-m", "cluster.cli", "down", "--state-dir", "insecure"], check=False, timeout=60)
