"""Metrics: the events a run logs, and how they read back (Azure ML's shapes).

An event is ``{"name", "kind": "scalar"|"list"|"row", "value", "t"}``. Reading aggregates them:
a name logged once with ``log`` reads as that value, logged repeatedly as the list of values (a series);
``log_list`` reads as the list; ``log_row`` reads as a dict (one row) or a list of dicts (several rows).
Names are kept exactly as given (spaces and all).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cluster import layout
from cluster.errors import NotFoundError, UsageError

if TYPE_CHECKING:  # train.py imports this module (through Run.get_context): no Redis or S3 client at import
    import redis

    from cluster.objectstore import ObjectStore


def check_value(name: str, value: Any) -> Any:
    """Metric values must be JSON numbers, strings or bools (numpy scalars converted)."""
    if not isinstance(name, str) or not name:
        raise UsageError(f"metric name must be a non-empty string, not {name!r}")
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise UsageError(f"metric {name!r}: cannot log a {type(value).__name__}",
                     hint="log numbers, strings or booleans; use log_list for sequences and log_row for tables")


def aggregate(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The run's own metrics: control events (``run.fail``, ``run.child_run``) and a child run's events are not
    among them (see :func:`children`)."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        if e.get("kind") == "control" or e.get("child"):
            continue
        grouped.setdefault(e["name"], []).append(e)
    out: dict[str, Any] = {}
    for name, evs in grouped.items():
        kind = evs[-1]["kind"]
        if kind == "list":
            out[name] = [v for e in evs for v in e["value"]]
        elif kind == "row":
            rows = [e["value"] for e in evs]
            out[name] = rows[0] if len(rows) == 1 else rows
        else:
            values = [e["value"] for e in evs]
            out[name] = values[0] if len(values) == 1 else values
    return out


def live_events(r: redis.Redis, run_id: str) -> list[dict[str, Any]] | None:
    """Events from the run's Redis stream, or None if there is no stream (finished long ago / Redis wiped)."""
    key = layout.rk_run_metrics(run_id)
    entries: Any = r.xrange(key)
    if not entries and not r.exists(key):
        return None
    return [json.loads(fields["e"]) for _id, fields in entries if "e" in fields]


def stored_events(store: ObjectStore, prefix: str) -> list[dict[str, Any]]:
    try:
        data = store.get_json(prefix + layout.RUN_METRICS)
    except NotFoundError:
        return []
    return list(data.get("events", []))


def read(r: redis.Redis, store: ObjectStore, run_id: str, prefix: str, *, final: bool) -> list[dict[str, Any]]:
    """The archive is authoritative once the run is final; before that, the live stream."""
    if final:
        events = stored_events(store, prefix)
        if events:
            return events
    live = live_events(r, run_id)
    return live if live is not None else stored_events(store, prefix)


def declared_failure(events: Iterable[dict[str, Any]]) -> str | None:
    """The message of the script's ``run.fail(...)`` (the last one), or None if it never called it."""
    message = None
    for e in events:
        if e.get("kind") == "control" and e.get("name") == "status" and not e.get("child"):
            message = str(e.get("message") or "the script marked the run as failed") if e.get("value") == "Failed" \
                else None
    return message


def children(events: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The child runs a script made with ``run.child_run(name)``, in order: name -> ``{"status", "error",
    "metrics"}``. A child is Completed unless it called ``fail``."""
    out: dict[str, dict[str, Any]] = {}
    own: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        child = e.get("child")
        if e.get("kind") == "control" and e.get("name") == "child" and not child:
            out.setdefault(str(e.get("value")), {"status": "Completed", "error": None})
            continue
        if not child:
            continue
        entry = out.setdefault(str(child), {"status": "Completed", "error": None})
        if e.get("kind") == "control" and e.get("name") == "status":
            entry["status"] = "Failed" if e.get("value") == "Failed" else "Completed"
            entry["error"] = e.get("message") if e.get("value") == "Failed" else None
        else:
            own.setdefault(str(child), []).append({k: v for k, v in e.items() if k != "child"})
    for name, entry in out.items():
        entry["metrics"] = aggregate(own.get(name, []))
    return out
