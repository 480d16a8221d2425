"""Connecting to Redis (broker and live state), with our errors."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis

from cluster.errors import CredentialsError, ServiceError, TLSError
from cluster.settings import Settings

TLS_HINT = ("this host does not trust the cluster's certificate: use the config file `cluster config export` "
            "writes on the cluster's host (it carries the CA as tls_ca), or set CLUSTER_TLS_CA to the CA's path")


def tls_kwargs(settings: Settings) -> dict[str, Any]:
    """redis-py's TLS arguments for ``rediss://``: certificates checked (host name included) against the
    cluster's CA when the config carries one, else the system's CAs. Empty for plain ``redis://``."""
    if urlsplit(settings.redis_url).scheme != "rediss":
        return {}
    kw: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    if settings.tls_ca:
        kw["ssl_ca_data"] = settings.tls_ca
    return kw


def connect(settings: Settings, *, check: bool = True, socket_timeout: float = 30) -> redis.Redis:
    """A Redis client for the cluster; with ``check`` it pings first so failures surface here, clearly.
    ``socket_timeout``: how long one command may wait for an answer (a node's lease renewals wait less)."""
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=socket_timeout,
                                  health_check_interval=30, decode_responses=True, **tls_kwargs(settings))
    if check:
        ping(client, settings)
    return client


def ping(client: redis.Redis, settings: Settings) -> None:
    try:
        client.ping()
    except redis.AuthenticationError as e:
        raise CredentialsError(
            f"Redis at {settings.redis_url_masked} rejected the password",
            hint=f"check redis_url in {settings.source or 'the configuration'}",
        ) from e
    except redis.ResponseError as e:
        if "NOAUTH" in str(e) or "WRONGPASS" in str(e):
            raise CredentialsError(f"Redis at {settings.redis_url_masked} needs a valid password: {e}",
                                   hint=f"check redis_url in {settings.source or 'the configuration'}") from e
        raise ServiceError(f"Redis at {settings.redis_url_masked} answered with an error: {e}") from e
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        from cluster.tls import is_certificate_error

        if is_certificate_error(e):
            raise TLSError(f"Redis at {settings.redis_url_masked} presented a certificate this host does not "
                           f"trust: {e}", hint=TLS_HINT) from e
        raise ServiceError(
            f"Redis at {settings.redis_url_masked} is not reachable: {e}",
            hint="start the cluster with `cluster up`, or check CLUSTER_REDIS_URL / the config file"
            + ("; a cluster listening on the network serves only TLS: the URL must start with rediss://"
               if urlsplit(settings.redis_url).scheme == "redis" and "closed" in str(e).lower() else ""),
        ) from e
