"""Child runs a training script made with ``run.child_run(name)``, seen from outside: ``parent.get_children()``.

A script holds no credentials, so its children are not separate records: their events travel in the parent's metric
stream, marked with the child's name, and are read back from there (live while the parent runs, from metrics.json
after). A child is Completed unless it called ``fail``; its files are the parent's.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from cluster import metrics

if TYPE_CHECKING:
    from cluster.run import Run


class ChildRun:
    """One child of a script: ``id`` is ``<parent id>/<name>``."""

    def __init__(self, parent: Run, name: str, info: dict[str, Any]) -> None:
        self.parent = parent
        self.name = name
        self.id = f"{parent.id}/{name}"
        self.experiment = parent.experiment
        self._info = info

    def get_status(self) -> str:
        if self._info["status"] == "Failed":
            return "Failed"
        return self._info["status"] if self.parent.get_status() in ("Completed", "Failed", "Canceled") else "Running"

    @property
    def status(self) -> str:
        return self.get_status()

    def get_metrics(self, name: str | None = None) -> dict[str, Any]:
        values = dict(self._info["metrics"])
        return values if name is None else ({name: values[name]} if name in values else {})

    def get_details(self) -> dict[str, Any]:
        return {"runId": self.id, "name": self.name, "parent": self.parent.id, "status": self.get_status(),
                "error": {"message": self._info["error"]} if self._info["error"] else None}

    def __repr__(self) -> str:
        return f"ChildRun(id={self.id!r}, status={self._info['status']!r})"


def script_children(run: Run, events: Iterable[dict[str, Any]]) -> list[Any]:
    """The children ``run``'s script made (``events``: the run's, see ``Run._events``), in the order it made them."""
    return [ChildRun(run, name, info) for name, info in metrics.children(events).items()]
