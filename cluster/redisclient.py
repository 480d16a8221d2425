"""Connecting to Redis (broker and live state), with our errors."""

from __future__ import annotations

import redis

from cluster.errors import CredentialsError, ServiceError
from cluster.settings import Settings


def connect(settings: Settings, *, check: bool = True) -> redis.Redis:
    """A Redis client for the cluster; with ``check`` it pings first so failures surface here, clearly."""
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=30,
                                  health_check_interval=30, decode_responses=True)
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
            raise CredentialsError(f"Redis at {settings.redis_url_masked} needs a valid password: {e}") from e
        raise ServiceError(f"Redis at {settings.redis_url_masked} answered with an error: {e}") from e
    except (redis.ConnectionError, redis.TimeoutError, OSError) as e:
        raise ServiceError(
            f"Redis at {settings.redis_url_masked} is not reachable: {e}",
            hint="start the cluster with `cluster up`, or check CLUSTER_REDIS_URL / the config file",
        ) from e
