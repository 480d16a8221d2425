"""The broker seam: how the SDK hands a run id to a pool's nodes, without importing Celery.

The SDK (``cluster/``) only ever sends a run id to a pool and asks which run ids are waiting or delivered; the
Celery implementation lives in the worker package (:class:`tasks.broker.CeleryBroker`) and is loaded by name when
a :class:`~cluster.workspace.Workspace` first needs it, so a client that only submits and reads never imports
Celery. Tests pass an in-memory broker (:class:`cluster.testing.MemoryBroker`) to the workspace instead.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cluster.errors import ConfigError, UsageError

if TYPE_CHECKING:
    import redis

    from cluster.settings import Settings

#: the implementation a workspace uses unless it is given one: ``module:attribute``, called as
#: ``factory(settings, redis)``
DEFAULT_BROKER = "tasks.broker:CeleryBroker"


@runtime_checkable
class Broker(Protocol):
    """A pool's queue of run ids (only a run id crosses the broker; the spec lives in the object store)."""

    def enqueue(self, run_id: str, pool: str) -> None:
        """Send ``run_id`` to ``pool``'s queue."""

    def queued_run_ids(self, pool: str) -> set[str]:
        """Run ids with a message waiting in ``pool``'s queue."""

    def unacked_run_ids(self) -> set[str]:
        """Run ids whose message a node received and has not acknowledged (it may be running them)."""


def load(spec: str, settings: Settings, r: redis.Redis) -> Broker:
    """The broker named by ``spec`` (``module:attribute``), built from the settings and the Redis client."""
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load the broker {spec!r}: {e}",
                          hint="install the worker package (`pip install cluster`) or pass broker= to Workspace") from e
    try:
        broker = factory(settings, r)
    except (TypeError, UsageError) as e:  # wrong signature, or a record refusing the arguments
        raise ConfigError(f"{spec!r} is not a broker factory: {e}",
                          hint="it is called as factory(settings, redis)") from e
    if not isinstance(broker, Broker):
        raise ConfigError(f"{spec!r} is not a broker", hint="it must have enqueue, queued_run_ids, unacked_run_ids")
    return broker
