"""``Run.get_context()`` inside a training script.

On a node the script's environment carries ``CLUSTER_RUN_ID`` and ``CLUSTER_RUN_CHANNEL`` (a file the
node tails); the script never sees Redis or object-store credentials. Anywhere else the context is an
offline run that prints what it logs, so the same train.py runs on a laptop.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cluster.errors import UsageError
from cluster.metrics import check_value

ENV_RUN_ID = "CLUSTER_RUN_ID"
ENV_CHANNEL = "CLUSTER_RUN_CHANNEL"
ENV_EXPERIMENT = "CLUSTER_EXPERIMENT"


class _ContextBase:
    id: str
    experiment_name: str

    def _emit(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def log(self, name: str, value: Any, description: str = "") -> None:
        self._emit({"name": name, "kind": "scalar", "value": check_value(name, value), "t": time.time()})

    def log_list(self, name: str, value: Sequence[Any], description: str = "") -> None:
        if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # a numpy array
            value = value.tolist()
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise UsageError(f"metric {name!r}: log_list takes a list of values, got {type(value).__name__}",
                             hint="use run.log(name, value) for a single value")
        values = [check_value(name, v) for v in value]
        self._emit({"name": name, "kind": "list", "value": values, "t": time.time()})

    def log_row(self, name: str, description: str = "", **kwargs: Any) -> None:
        row = {k: check_value(name, v) for k, v in kwargs.items()}
        self._emit({"name": name, "kind": "row", "value": row, "t": time.time()})

    def flush(self) -> None:
        pass


class LiveRunContext(_ContextBase):
    """The run as seen from inside a node-launched script: metrics go through the per-run channel."""

    def __init__(self, run_id: str, channel: str, experiment: str = "") -> None:
        self.id = run_id
        self.experiment_name = experiment
        self._channel = open(channel, "a", encoding="utf-8")  # noqa: SIM115 -- lives as long as the run

    def _emit(self, event: dict[str, Any]) -> None:
        self._channel.write(json.dumps(event) + "\n")
        self._channel.flush()

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, live)"


class OfflineRun(_ContextBase):
    """Not on a node: metrics are printed and kept in memory (``.metrics``)."""

    def __init__(self) -> None:
        self.id = f"OfflineRun_{int(time.time())}"
        self.experiment_name = "offline"
        self.events: list[dict[str, Any]] = []

    def _emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        print(f"[offline run] {event['name']}: {event['value']}", file=sys.stderr)

    def get_metrics(self) -> dict[str, Any]:
        from cluster.metrics import aggregate

        return aggregate(self.events)

    def __repr__(self) -> str:
        return f"OfflineRun(id={self.id!r})"


_CONTEXT: _ContextBase | None = None


def get_context(environ: Mapping[str, str] | None = None) -> _ContextBase:
    global _CONTEXT
    env = os.environ if environ is None else environ
    if environ is None and _CONTEXT is not None:
        return _CONTEXT
    run_id, channel = env.get(ENV_RUN_ID), env.get(ENV_CHANNEL)
    ctx: _ContextBase = (LiveRunContext(run_id, channel, env.get(ENV_EXPERIMENT, "")) if run_id and channel
                         else OfflineRun())
    if environ is None:
        _CONTEXT = ctx
    return ctx
