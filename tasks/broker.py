"""The Celery implementation of the SDK's broker seam (:class:`cluster.broker.Broker`).

A workspace loads it by name (``cluster.broker.DEFAULT_BROKER``) the first time it enqueues, so the SDK itself
never imports Celery. Enqueueing sends the task with the run id as its only argument; what is waiting or delivered
is read straight from Redis (:mod:`tasks.brokerqueue`).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from cluster import layout
from tasks import brokerqueue

if TYPE_CHECKING:
    import redis
    from celery import Celery

    from cluster.settings import Settings


class CeleryBroker:
    def __init__(self, settings: Settings, r: redis.Redis) -> None:
        self.settings = settings
        self.redis = r

    @cached_property
    def app(self) -> Celery:
        from tasks.app import create_app  # Celery is imported on the first enqueue, not when the SDK loads this

        return create_app(self.settings)

    def enqueue(self, run_id: str, pool: str) -> None:
        from tasks.app import enqueue

        enqueue(self.app, run_id, pool)

    def queued_run_ids(self, pool: str) -> set[str]:
        return brokerqueue.queued_run_ids(self.redis, layout.queue_name(pool))

    def unacked_run_ids(self) -> set[str]:
        return brokerqueue.unacked_run_ids(self.redis)
