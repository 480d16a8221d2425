"""One settings object for the whole system, read from a config file or the environment at the edge.

Library modules never read the environment themselves: the CLI, the worker entry point and
``Workspace.from_config`` build a :class:`Settings` and pass it down.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import field, replace
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from pydantic import AfterValidator, BeforeValidator, Field

from cluster import layout
from cluster.errors import ConfigError
from cluster.schema import Record, load, record

CONFIG_DIR = ".cluster"
CONFIG_FILE = "config.json"

ENV_CONFIG = "CLUSTER_CONFIG"
ENV_VARS = {
    "workspace_name": "CLUSTER_WORKSPACE",
    "redis_url": "CLUSTER_REDIS_URL",
    "s3_endpoint": "CLUSTER_S3_ENDPOINT",
    "s3_access_key": "CLUSTER_S3_ACCESS_KEY",
    "s3_secret_key": "CLUSTER_S3_SECRET_KEY",
    "s3_secure": "CLUSTER_S3_SECURE",
    "data_bucket": "CLUSTER_DATA_BUCKET",
    "cluster_bucket": "CLUSTER_BUCKET",
    "metrics_port": "CLUSTER_METRICS_PORT",
    "tls_ca": "CLUSTER_TLS_CA",
}


def mask(secret: str) -> str:
    """Show a secret's first two characters only."""
    return (secret[:2] + "****") if secret else ""


def _redis_scheme(url: str) -> str:
    if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ValueError(f"is not a Redis URL: {mask(url)!r} (write it as redis://:PASSWORD@HOST:PORT/0)")
    return url


def _as_bool(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"1", "true", "yes", "on"}
    return bool(value)


def _as_port(value: object) -> object:
    """A port as JSON or the environment gives it: ``9100``, ``"9100"``, empty (none)."""
    if isinstance(value, bool):
        raise ValueError(f"is not a TCP port: {value!r}")
    if isinstance(value, str):
        try:
            return int(value.strip() or 0)
        except ValueError:
            raise ValueError(f"is not a TCP port: {value!r} (a number from 1 to 65535, or 0 for none)") from None
    return value or 0


def _no_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"must be a positive whole number of bytes, got {value!r}")
    return value


RedisURL = Annotated[str, AfterValidator(_redis_scheme)]
Port = Annotated[int, BeforeValidator(_as_port), Field(ge=0, lt=65536)]
Flag = Annotated[bool, BeforeValidator(_as_bool)]
Bytes = Annotated[int, BeforeValidator(_no_bool), Field(gt=0)]


@record
class Settings(Record):
    """Endpoints, credentials and limits for one cluster (one workspace). The field types are the checks
    (cluster/schema.py); :meth:`from_dict` adds what needs the file's location (``tls_ca`` given as a path)."""

    __what__ = "configuration {source}"
    __load_error__ = ConfigError

    redis_url: RedisURL
    s3_endpoint: str
    s3_access_key: str
    s3_secret_key: str = field(repr=False)
    s3_secure: Flag = False
    s3_region: str = "us-east-1"
    workspace_name: str = "local"
    data_bucket: str = layout.DATA_BUCKET
    cluster_bucket: str = layout.CLUSTER_BUCKET
    max_snapshot_bytes: Bytes = 300 * 1024**2
    metrics_port: Port = 0  # the controller's Prometheus endpoint (0: none); see cluster/telemetry.py
    # the private CA (PEM text, or a file path) that signed the servers' certificates when they serve TLS
    # (rediss://, s3_secure); empty: the system's trusted CAs. See cluster/tls.py and docs/multihost.md
    tls_ca: str = field(default="", repr=False)
    source: str = ""  # where these settings came from, for messages

    def __repr__(self) -> str:
        return (
            f"Settings(workspace={self.workspace_name!r}, redis={self.redis_url_masked}, "
            f"s3={self.s3_endpoint}, access_key={mask(self.s3_access_key)}, source={self.source!r})"
        )

    @property
    def redis_url_masked(self) -> str:
        parts = urlsplit(self.redis_url)
        if parts.password:
            netloc = f":****@{parts.hostname}:{parts.port}"
            return parts._replace(netloc=netloc).geturl()
        return self.redis_url

    @property
    def s3_url(self) -> str:
        return f"{'https' if self.s3_secure else 'http'}://{self.s3_endpoint}"

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data.pop("source")
        return data

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "") -> Settings:
        if not isinstance(data, Mapping):
            raise ConfigError(f"configuration from {source or 'dict'} must be a mapping, got {type(data).__name__}")
        missing = [k for k in ("redis_url", "s3_endpoint", "s3_access_key", "s3_secret_key") if not data.get(k)]
        if missing:
            raise ConfigError(
                f"configuration from {source or 'dict'} lacks {', '.join(missing)}",
                hint="run `cluster up` to write a complete .cluster/config.json, or set the CLUSTER_* variables",
            )
        where = source or "the configuration"
        settings = load(cls, {**data, "source": source}, error=ConfigError, what=f"bad configuration in {where}")
        return replace(settings, tls_ca=_ca_text(settings.tls_ca, where, source))

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Settings:
        p = Path(path)
        if p.is_dir():
            candidates = [p / CONFIG_FILE, p / CONFIG_DIR / CONFIG_FILE]
            p = next((c for c in candidates if c.is_file()), candidates[0])
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(
                f"no cluster configuration at {p}",
                hint="run `cluster up` in this directory, or pass the path of a config.json",
            ) from e
        except (OSError, ValueError) as e:
            raise ConfigError(f"cannot read configuration {p}: {e}", hint="fix or delete the file") from e
        if not isinstance(data, dict):
            raise ConfigError(f"configuration {p} is not a JSON object")
        return cls.from_dict(data, source=str(p))

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings | None:
        values = {k: environ[v] for k, v in ENV_VARS.items() if environ.get(v)}
        if not values:
            return None
        return cls.from_dict(values, source="environment (CLUSTER_*)")

    @classmethod
    def discover(cls, path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None,
                 cwd: Path | None = None) -> Settings:
        """Find the configuration: an explicit path, $CLUSTER_CONFIG, .cluster/config.json in the current
        directory or a parent, then the CLUSTER_* variables."""
        env = os.environ if environ is None else environ
        if path is not None:
            if not isinstance(path, str | os.PathLike) or not str(path).strip():
                raise ConfigError(f"the configuration path must be a file or folder path, got {path!r}")
            return cls.from_file(path)
        if env.get(ENV_CONFIG):
            return cls.from_file(env[ENV_CONFIG])
        start = (cwd or Path.cwd()).resolve()
        for folder in (start, *start.parents):
            for candidate in (folder / CONFIG_DIR / CONFIG_FILE, folder / CONFIG_FILE):
                if candidate.is_file() and (candidate.parent.name == CONFIG_DIR or _looks_like_ours(candidate)):
                    return cls.from_file(candidate)
        from_env = cls.from_env(env)
        if from_env is not None:
            return from_env
        raise ConfigError(
            f"no cluster configuration found in {start} or its parents",
            hint="run `cluster up` to start the embedded cluster (it writes .cluster/config.json), "
            "pass a path to Workspace.from_config(path=...), or set CLUSTER_REDIS_URL, CLUSTER_S3_ENDPOINT, "
            "CLUSTER_S3_ACCESS_KEY and CLUSTER_S3_SECRET_KEY",
        )


def redis_url(host: str, port: int, password: str, db: int = 0) -> str:
    return f"redis://:{quote(password, safe='')}@{host}:{port}/{db}"


def _ca_text(value: str, where: str, source: str) -> str:
    """tls_ca as PEM text: given inline, or read from a file (relative to the config file's folder)."""
    value = value.strip()
    if not value or value.startswith("-----BEGIN"):
        if value and "-----BEGIN CERTIFICATE-----" not in value:
            raise ConfigError(f"tls_ca in {where} is not a PEM certificate",
                              hint="export the config again with `cluster config export`, or give the CA file's path")
        return value + "\n" if value else ""
    path = Path(value).expanduser()
    if not path.is_absolute() and source and Path(source).is_file():
        path = Path(source).parent / path
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"tls_ca in {where} names {path}, which cannot be read: {e}",
                          hint="give the path of the cluster's ca.pem, or its PEM text") from e
    return _ca_text(text, f"{path} (tls_ca of {where})", "")


def _looks_like_ours(path: Path) -> bool:
    """A bare config.json counts only if it has our keys (Azure's config.json does not)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "redis_url" in data and "s3_endpoint" in data
