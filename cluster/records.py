"""Run specifications and run records: typed records (cluster/schema.py), one error for bad payloads.

A :class:`RunSpec` is written once at submit (``spec.json``); a :class:`RunRecord` is the run's state
(``run.json`` in the object store, mirrored in a Redis hash while the run is live).
"""

from __future__ import annotations

import time
from dataclasses import field, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from cluster import layout
from cluster.errors import TransitionError
from cluster.schema import Record, record


class RunStatus(StrEnum):
    QUEUED = "Queued"
    PREPARING = "Preparing"
    RUNNING = "Running"
    FINALIZING = "Finalizing"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELED = "Canceled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED})

# Which status may follow which. The node, not the script, decides; a canceled or finished run stays so.
# ``-> Queued`` from a live state is a retry (node lost or stopping); ``-> Preparing`` from a live state is a new
# attempt that took the lease of one whose node died. Every status change goes through
# :meth:`RunRecord.with_status`, which enforces this table.
_LIVE_RETRY = frozenset({RunStatus.QUEUED, RunStatus.PREPARING})
TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.PREPARING, RunStatus.CANCELED, RunStatus.FAILED}),
    RunStatus.PREPARING: frozenset({RunStatus.RUNNING, RunStatus.FINALIZING, RunStatus.FAILED, RunStatus.CANCELED})
    | _LIVE_RETRY,
    RunStatus.RUNNING: frozenset({RunStatus.FINALIZING, RunStatus.FAILED, RunStatus.CANCELED}) | _LIVE_RETRY,
    RunStatus.FINALIZING: frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED}) | _LIVE_RETRY,
    RunStatus.COMPLETED: frozenset(),
    RunStatus.FAILED: frozenset(),
    RunStatus.CANCELED: frozenset(),
}

#: the ``kind`` tag of a sweep's parent run, which no node executes: the controller moves it from Queued to Running
#: at submit, and to a final status when the sweep ends
KIND_SWEEP = "sweep"
SWEEP_TRANSITIONS: dict[RunStatus, frozenset[RunStatus]] = {
    RunStatus.QUEUED: frozenset({RunStatus.RUNNING, RunStatus.CANCELED, RunStatus.FAILED}),
    RunStatus.RUNNING: frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED}),
    **{s: frozenset() for s in (RunStatus.PREPARING, RunStatus.FINALIZING, *FINAL_STATUSES)},
}


def can_transition(current: RunStatus, new: RunStatus, *, sweep: bool = False) -> bool:
    """Pure: is ``current -> new`` allowed (for a sweep's parent run with ``sweep``)? Staying put always is."""
    return new == current or new in (SWEEP_TRANSITIONS if sweep else TRANSITIONS)[current]


def now_iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, UTC).isoformat(timespec="milliseconds")


def parse_iso(stamp: str | None) -> float | None:
    """The epoch seconds of a record's timestamp (as :func:`now_iso` writes them); None if absent or unreadable."""
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None


@record
class RunSpec(Record):
    """What to run. Arguments may contain data references (as dicts); the node resolves them."""

    __what__ = "run spec {run_id!r}"

    run_id: str
    experiment: str
    snapshot: str  # sha256 digest of the source snapshot
    entry_script: str
    arguments: tuple[Any, ...] = ()
    pool: str = "default"
    pip_packages: tuple[str, ...] = ()
    conda_packages: tuple[str, ...] = ()
    environment_variables: dict[str, str] = field(default_factory=dict)
    max_run_duration_seconds: float | None = None
    tags: dict[str, str] = field(default_factory=dict)
    parent_id: str | None = None
    prefix: str = ""  # the run's folder in the cluster bucket
    submitted_at: str = ""


@record
class RunError(Record):
    """Why a run failed: kind is 'user' (the script), 'timeout', 'infrastructure', 'node-lost', 'storage' (the object
    store or Redis did not answer for longer than the node retries) or 'disk' (the node's disk ran full)."""

    kind: str
    message: str
    exit_code: int | None = None
    signal: int | None = None
    stderr_tail: tuple[str, ...] = ()


@record
class RunRecord(Record):
    """A run's state: ``run.json`` in the object store, mirrored in a Redis hash while the run is live."""

    __what__ = "run record {run_id!r}"

    run_id: str
    experiment: str
    status: RunStatus
    prefix: str
    pool: str = "default"
    attempt: int = 0
    node: str | None = None
    timestamps: dict[str, str] = field(default_factory=dict)  # status value -> ISO time it was entered
    error: RunError | None = None
    arguments: tuple[str, ...] = ()  # resolved on the node
    parent_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    attempts: tuple[dict[str, Any], ...] = ()  # history: attempt, node, outcome
    #: the attempt whose files (outputs, logs, metrics archive) are the run's result; set by the attempt's final,
    #: fenced write, so it names exactly one attempt that finished and uploaded everything
    committed: int | None = None

    @property
    def files_prefix(self) -> str:
        """Where readers find the run's files: the committed attempt's folder. Runs stored before attempts had
        their own folders (and runs with no committed attempt) use the run's folder."""
        return f"{self.prefix}{layout.attempt_dir(self.committed)}" if self.committed else self.prefix

    def with_status(self, status: RunStatus, *, at: float | None = None, **changes: Any) -> RunRecord:
        """The record in ``status`` (entered at ``at``, now by default); raises :class:`TransitionError` unless
        the state machine allows the change."""
        sweep = self.tags.get("kind") == KIND_SWEEP
        if not can_transition(self.status, status, sweep=sweep):
            raise TransitionError(f"run {self.run_id}: {self.status.value} -> {status.value} is not a valid "
                                  f"{'sweep ' if sweep else ''}run status change",
                                  hint="a finished run stays finished, and a node moves a run Queued -> Preparing -> "
                                  "Running -> Finalizing -> Completed (records.TRANSITIONS)")
        stamps = dict(self.timestamps)
        stamps.setdefault(status.value, now_iso(at))
        return replace(self, status=status, timestamps=stamps, **changes)


def is_sweep(record: RunRecord) -> bool:
    """A sweep's parent run (tag ``kind=sweep``, no parent): it is driven by the controller, not run by a node."""
    return record.tags.get("kind") == KIND_SWEEP and record.parent_id is None
