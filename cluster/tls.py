"""Transport security for a cluster other hosts reach over the network.

`cluster up --listen ADDR` serves Redis (its TLS port, ``rediss://``) and the S3 endpoint (HTTPS) on ``ADDR``.
It keeps a private certificate authority in the state directory and issues the servers one certificate for
``ADDR``, ``127.0.0.1`` and ``localhost``. The CA's certificate (public) travels in every config file a node,
the controller or a client receives (``tls_ca``); its key never leaves the state directory::

    .cluster/tls/ca.pem          the CA certificate (what clients trust)
    .cluster/tls/ca-key.pem      the CA key (0600; stays here)
    .cluster/tls/server.pem      the servers' certificate, issued for the listen address
    .cluster/tls/server-key.pem  its key (0600)
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cluster.errors import UsageError

TLS_DIR = "tls"
CA_DAYS = 3650
SERVER_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class TLSFiles:
    """Where the CA and the servers' certificate live, and the CA certificate's text."""

    ca: Path
    cert: Path
    key: Path
    ca_pem: str


def is_loopback(address: str) -> bool:
    """127.0.0.0/8, ::1 and localhost."""
    if address.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_listen_address(address: str) -> str:
    """The address other hosts use to reach this one: an IP address or a host name, not a wildcard."""
    address = address.strip()
    if not address or (any(c in address for c in " /:@") and not _is_ipv6(address)):
        raise UsageError(f"--listen needs an IP address or host name, got {address!r}",
                         hint="e.g. --listen 10.0.0.5 (the address nodes and clients use to reach this host)")
    if address in ("0.0.0.0", "::"):
        raise UsageError(f"--listen {address} is a wildcard: nodes need an address they can reach and the "
                         "certificate must name it",
                         hint="give this host's address on the network the nodes use, e.g. --listen 10.0.0.5")
    return address


def _is_ipv6(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).version == 6
    except ValueError:
        return False


def ensure_certificates(state_dir: Path, hosts: Sequence[str]) -> TLSFiles:
    """The CA (created once, kept) and a server certificate valid for ``hosts`` (issued again on every call:
    cheap, and it follows a changed listen address)."""
    folder = Path(state_dir) / TLS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    ca_path, ca_key_path = folder / "ca.pem", folder / "ca-key.pem"
    ca_cert, ca_key = _load_ca(ca_path, ca_key_path)
    if ca_cert is None or ca_key is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = _issue_ca(ca_key, Path(state_dir).resolve().parent.name or "cluster")
        _write(ca_key_path, _key_pem(ca_key), private=True)
        _write(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue_server(key, ca_cert, ca_key, hosts)
    cert_path, key_path = folder / "server.pem", folder / "server-key.pem"
    _write(key_path, _key_pem(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return TLSFiles(ca=ca_path, cert=cert_path, key=key_path, ca_pem=ca_path.read_text())


def server_names(listen: str) -> list[str]:
    """What the servers' certificate names: the listen address, loopback, and this host's name."""
    names = [listen, "127.0.0.1", "localhost", socket.gethostname()]
    return list(dict.fromkeys(n for n in names if n))


def client_context(ca_pem: str) -> ssl.SSLContext:
    """A client context that trusts ``ca_pem`` (only), checks host names, TLS 1.2 at least."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def is_certificate_error(exc: BaseException) -> bool:
    """Does this error (or one it wraps) say the server's certificate was not trusted?"""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ssl.SSLCertVerificationError):
            return True
        text = str(cur)
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
            return True
        cur = getattr(cur, "reason", None) or cur.__cause__ or cur.__context__
    return False


# ---- internals ----------------------------------------------------------------------------------

def _load_ca(cert_path: Path, key_path: Path) -> tuple[x509.Certificate | None, ec.EllipticCurvePrivateKey | None]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError):
        return None, None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        return None, None
    if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < RENEW_BEFORE:
        return None, None
    return cert, key


def _issue_ca(key: ec.EllipticCurvePrivateKey, name: str) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cluster"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"cluster CA ({name})"[:64])])
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))


def _issue_server(key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                  hosts: Sequence[str]) -> x509.Certificate:
    sans: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64] if hosts else "cluster")])
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, *, private: bool) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600 if private else 0o644)
    tmp.replace(path)
