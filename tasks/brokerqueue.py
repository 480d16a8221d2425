"""What the broker holds for each run, read straight from Redis (no Celery import).

Celery's Redis transport (kombu) keeps a queue as a Redis list of JSON envelopes whose base64 body is
``[args, kwargs, embed]``; messages delivered but not yet acknowledged sit in the ``unacked`` hash as
``[envelope, exchange, routing key]``. Our task's only argument is the run id. The controller uses this to find
a Queued run that has no message anywhere (an acknowledged delivery that never claimed it, a broker that lost
it) and to queue it again.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import redis

UNACKED_KEY = "unacked"  # kombu's default unacked_key


def _run_id(envelope: Any) -> str | None:
    try:
        message = json.loads(envelope) if isinstance(envelope, str | bytes) else envelope
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def queued_run_ids(r: redis.Redis, queue: str) -> set[str]:
    """Run ids with a message waiting in ``queue``."""
    return {rid for raw in r.lrange(queue, 0, -1) if (rid := _run_id(raw))}


def unacked_run_ids(r: redis.Redis) -> set[str]:
    """Run ids whose message a node received and has not acknowledged (it may be running them)."""
    out = set()
    for raw in r.hvals(UNACKED_KEY):
        try:
            envelope = json.loads(raw)[0]
        except (ValueError, IndexError, TypeError):
            continue
        if rid := _run_id(envelope):
            out.add(rid)
    return out
