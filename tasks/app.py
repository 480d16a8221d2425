"""The Celery app. Only a run id crosses the broker, JSON-encoded; the spec lives in the object store.

A node is one worker with one slot: the ``solo`` pool (concurrency 1, the task runs in the worker
process), prefetch 1, late acknowledgement, reject on worker lost. Duplicate deliveries (Redis'
visibility timeout, a node coming back) are harmless: the run's lease admits one attempt at a time.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from celery import Celery
from celery.exceptions import Reject

from cluster import layout, redisclient
from cluster.settings import Settings

if TYPE_CHECKING:
    from tasks.node import Node

log = logging.getLogger(__name__)

TASK_NAME = "cluster.execute_run"
VISIBILITY_TIMEOUT = 3600
REDELIVER_PAUSE = 1.0  # seconds before a message that could not be claimed goes back to the queue

_node: Node | None = None


def create_app(settings: Settings, *, visibility_timeout: float = VISIBILITY_TIMEOUT,
               remote_control: bool = False) -> Celery:
    """The app; ``remote_control`` lets the worker answer Celery's inspect/control broadcasts (Flower's worker
    view needs it) -- off by default: whoever can write to the broker could then shut nodes down."""
    app = Celery("cluster", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(visibility_timeout),
        task_create_missing_queues=True,
        worker_enable_remote_control=remote_control,  # off: no broadcast commands (shutdown, ...) via the broker
    )
    tls = redisclient.tls_kwargs(settings)
    if tls:  # rediss://: kombu hands these to redis-py's SSLConnection (the cluster's CA, host names checked)
        app.conf.broker_use_ssl = tls
    app.task(name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)(execute_run_task)
    return app


def _transport_options(visibility_timeout: float) -> dict[str, float]:
    """kombu scans for expired unacked messages every interval x throttle seconds (100 s by default);
    a short visibility timeout gets a matching scan period."""
    opts: dict[str, float] = {"visibility_timeout": visibility_timeout}
    if visibility_timeout < 100:
        opts |= {"unacked_restore_interval": max(1, visibility_timeout / 2), "unacked_restore_throttle": 1}
    return opts


def execute_run_task(run_id: str) -> str:
    """The task: a thin shell over :func:`tasks.node.execute_run`."""
    from tasks.node import NodeStopped, Redeliver, execute_run

    if _node is None:
        raise RuntimeError("this worker was not started as a cluster node (use `cluster worker`)")
    try:
        return execute_run(_node, run_id)
    except NodeStopped as e:
        raise Reject(f"node stopping; run {e} handed back", requeue=True) from e
    except Redeliver as e:
        log.warning("node: %s; the message goes back to the queue", e)
        time.sleep(REDELIVER_PAUSE)  # an outage: don't spin on the same message
        raise Reject(str(e), requeue=True) from e


def set_node(node: Node | None) -> None:
    global _node
    _node = node


def enqueue(app: Celery, run_id: str, pool: str) -> None:
    app.send_task(TASK_NAME, args=[run_id], queue=layout.queue_name(pool))
