"""``Run.get_context()`` inside a training script.

On a node the script's environment carries ``CLUSTER_RUN_ID`` and ``CLUSTER_RUN_CHANNEL`` (a file the
node tails); the script never sees Redis or object-store credentials. Anywhere else the context is an
offline run that prints what it logs, so the same train.py runs on a laptop.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cluster.errors import UsageError
from cluster.metrics import check_value

ENV_RUN_ID = "CLUSTER_RUN_ID"
ENV_CHANNEL = "CLUSTER_RUN_CHANNEL"
ENV_EXPERIMENT = "CLUSTER_EXPERIMENT"
ENV_PARENT = "CLUSTER_RUN_PARENT_ID"
ENV_RESUMED_FROM = "CLUSTER_RUN_RESUMED_FROM_ATTEMPT"
#: where a script saves checkpoints: the node uploads it while the script runs and restores it on a retry
CHECKPOINT_DIR = "outputs/checkpoints"


class _Named:
    """``run.experiment`` / ``run.parent`` inside a script: the name / id only (a script holds no credentials to
    open the Experiment or the parent Run; use them from outside with ``Run.get(ws, run.parent.id)``)."""

    def __init__(self, kind: str, **attrs: str) -> None:
        self._kind = kind
        self.__dict__.update(attrs)

    def __repr__(self) -> str:
        return f"{self._kind}({', '.join(f'{k}={v!r}' for k, v in vars(self).items() if not k.startswith('_'))})"


class _ContextBase:
    id: str
    experiment_name: str
    parent_id: str | None = None
    resumed_from_attempt: int | None = None  # the attempt whose checkpoint this one started with
    _child: str | None = None  # set on a child run's context: its events carry the child's name
    _root: Path = Path(".")

    def _emit(self, event: dict[str, Any]) -> None:
        raise NotImplementedError

    def _send(self, event: dict[str, Any]) -> None:
        if self._child is not None:
            event["child"] = self._child
        self._emit(event)

    # -- metrics ----------------------------------------------------------------------------------
    def log(self, name: str, value: Any, description: str = "") -> None:
        self._send({"name": name, "kind": "scalar", "value": check_value(name, value), "t": time.time()})

    def log_list(self, name: str, value: Sequence[Any], description: str = "") -> None:
        if hasattr(value, "tolist") and not isinstance(value, str | bytes):  # a numpy array
            value = value.tolist()
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            raise UsageError(f"metric {name!r}: log_list takes a list of values, got {type(value).__name__}",
                             hint="use run.log(name, value) for a single value")
        values = [check_value(name, v) for v in value]
        self._send({"name": name, "kind": "list", "value": values, "t": time.time()})

    def log_row(self, name: str, description: str = "", **kwargs: Any) -> None:
        row = {k: check_value(name, v) for k, v in kwargs.items()}
        self._send({"name": name, "kind": "row", "value": row, "t": time.time()})

    def log_table(self, name: str, value: Mapping[str, Sequence[Any]], description: str = "") -> None:
        """A table as columns, ``{'epoch': [1, 2], 'loss': [0.5, 0.3]}``; reads back as that dict."""
        if not isinstance(value, Mapping) or not value:
            raise UsageError(f"metric {name!r}: log_table takes a non-empty dict of column -> list of values",
                             hint="e.g. run.log_table('curve', {'epoch': [1, 2], 'loss': [0.5, 0.3]})")
        table: dict[str, list[Any]] = {}
        for col, values in value.items():
            if not isinstance(col, str):
                raise UsageError(f"metric {name!r}: column names must be strings, got {col!r}")
            if hasattr(values, "tolist") and not isinstance(values, str | bytes):
                values = values.tolist()
            if isinstance(values, str | bytes) or not isinstance(values, Sequence):
                raise UsageError(f"metric {name!r}: column {col!r} must be a list of values")
            table[col] = [check_value(name, v) for v in values]
        if len({len(v) for v in table.values()}) > 1:
            raise UsageError(f"metric {name!r}: the columns of a table must have the same length")
        self._send({"name": name, "kind": "table", "value": table, "t": time.time()})

    def log_image(self, name: str, path: str | os.PathLike[str] | None = None, plot: Any = None,
                  description: str = "") -> None:
        """A PNG (a file, or a matplotlib figure / ``pyplot``): stored as ``outputs/images/<name>.png`` (uploaded
        with the outputs) and listed among the metrics as that file name."""
        check_value(name, 0)  # the name's rules
        if (path is None) == (plot is None):
            raise UsageError(f"log_image({name!r}): give exactly one of path= or plot=",
                             hint="run.log_image('digits', plot=fig) or run.log_image('digits', path='digits.png')")
        rel = f"outputs/images/{_safe_file_name(name)}.png"
        target = self._root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if path is not None:
            source = Path(os.fspath(path))
            if not source.is_file():
                raise UsageError(f"log_image({name!r}): {source} is not a file")
            if source.read_bytes()[:8] != b"\x89PNG\r\n\x1a\n":
                raise UsageError(f"log_image({name!r}): {source} is not a PNG file",
                                 hint="save the figure with format='png', or pass plot=fig")
            shutil.copyfile(source, target)
        else:
            savefig = getattr(plot, "savefig", None)
            if not callable(savefig):
                raise UsageError(f"log_image({name!r}): plot must be a matplotlib figure or pyplot, "
                                 f"got {type(plot).__name__}")
            savefig(target, format="png")
        self._send({"name": name, "kind": "image", "value": rel, "t": time.time()})

    # -- files ------------------------------------------------------------------------------------
    def upload_file(self, name: str, path_or_stream: Any) -> str:
        """Copy a file (or a binary stream) into the run's files as ``name`` (under ./outputs unless it starts
        with ``outputs/`` or ``logs/``); it is uploaded with the outputs. Returns the run-relative name."""
        rel = _run_file_name(name)
        target = self._root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if hasattr(path_or_stream, "read"):
            with open(target, "wb") as out:
                shutil.copyfileobj(path_or_stream, out)
        else:
            source = Path(os.fspath(path_or_stream))
            if not source.is_file():
                raise UsageError(f"upload_file({name!r}): {source} is not a file")
            if source.resolve() != target.resolve():
                shutil.copyfile(source, target)
        return rel

    def upload_folder(self, name: str, path: str | os.PathLike[str]) -> list[str]:
        """Copy a folder into the run's files under ``name`` (as ``upload_file``); returns the names."""
        source = Path(os.fspath(path))
        if not source.is_dir():
            raise UsageError(f"upload_folder({name!r}): {source} is not a folder")
        return [self.upload_file(f"{_run_file_name(name)}/{f.relative_to(source).as_posix()}", f)
                for f in sorted(source.rglob("*")) if f.is_file() and not f.is_symlink()]

    # -- checkpoints ------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        """``./outputs/checkpoints`` (created): what a script saves here is uploaded every few seconds while it
        runs, and a retried attempt finds the last upload here again (see ``resumed_from_attempt``)."""
        path = self._root / CHECKPOINT_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path

    # -- status -----------------------------------------------------------------------------------
    def complete(self) -> None:
        """Azure marks the run Completed here; on this cluster the run is Completed when the script exits 0.
        For a child run: marks it Completed."""
        self._send({"name": "status", "kind": "control", "value": "Completed", "t": time.time()})
        self.flush()

    def fail(self, error_details: Any = None, error_code: str | None = None, _set_status: bool = True) -> None:
        """Mark the run Failed with ``error_details`` (a message or an exception), even if the script then exits 0."""
        message = str(error_details) if error_details is not None else "the script marked the run as failed"
        self._send({"name": "status", "kind": "control", "value": "Failed", "message": message[:2000],
                    "code": error_code, "t": time.time()})
        self.flush()

    def child_run(self, name: str | None = None, run_id: str | None = None, outputs: str | None = None) -> Any:
        """A child run of this run, for metrics of one part of the work (a fold, a model). Its metrics travel with
        this run's; ``parent.get_children()`` lists it (Completed unless it called ``fail``)."""
        child_name = run_id or name or f"child_{len(self._children) + 1}"
        check_value(child_name, 0)
        if "/" in child_name or len(child_name) > 128:
            raise UsageError(f"child run name {child_name!r} must be at most 128 characters, without '/'")
        child = _ChildContext(self, child_name)
        self._children.append(child_name)
        self._send({"name": "child", "kind": "control", "value": child_name, "t": time.time()})
        return child

    @property
    def _children(self) -> list[str]:
        kids = self.__dict__.get("_kids")
        if kids is None:
            kids = self.__dict__["_kids"] = []
        return kids

    @property
    def experiment(self) -> Any:
        return _Named("Experiment", name=self.experiment_name)

    @property
    def parent(self) -> Any:
        return None if self.parent_id is None else _Named("Run", id=self.parent_id)

    def get_status(self) -> str:
        return "Running"

    def flush(self) -> None:
        pass

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None:
            self.fail(exc)
        elif self._child is not None:
            self.complete()


class _ChildContext(_ContextBase):
    """``run.child_run(name)``: logs through the parent's channel, marked with the child's name."""

    def __init__(self, parent: _ContextBase, name: str) -> None:
        self._parent = parent
        self._child = name
        self.id = f"{parent.id}/{name}"
        self.experiment_name = parent.experiment_name
        self.parent_id = parent.id
        self._root = parent._root

    def _emit(self, event: dict[str, Any]) -> None:
        self._parent._emit(event)

    def child_run(self, name: str | None = None, run_id: str | None = None, outputs: str | None = None) -> Any:
        raise UsageError("a child run cannot have children of its own here", hint="call run.child_run on the parent")

    def __repr__(self) -> str:
        return f"Run(id={self.id!r}, child)"


def _safe_file_name(name: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "image"


def _run_file_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"a run file name must be a non-empty string, got {name!r}", hint="e.g. 'outputs/report.txt'")
    rel = name.replace("\\", "/").strip("/")
    if any(p in ("..", "") for p in rel.split("/")):
        raise UsageError(f"run file name {name!r} may not contain '..' or empty parts")
    return rel if rel.split("/")[0] in ("outputs", "logs") else f"outputs/{rel}"


class LiveRunContext(_ContextBase):
    """The run as seen from inside a node-launched script: metrics go through the per-run channel."""

    def __init__(self, run_id: str, channel: str, experiment: str = "", parent_id: str | None = None,
                 resumed_from_attempt: int | None = None) -> None:
        self.id = run_id
        self.experiment_name = experiment
        self.parent_id = parent_id or None
        self.resumed_from_attempt = resumed_from_attempt
        self._root = Path.cwd()  # the run directory (the script may chdir later)
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
        who = f"{event['child']}: " if event.get("child") else ""
        print(f"[offline run] {who}{event['name']}: {event['value']}", file=sys.stderr)

    def get_metrics(self) -> dict[str, Any]:
        from cluster.metrics import aggregate

        return aggregate(self.events)

    def __repr__(self) -> str:
        return f"OfflineRun(id={self.id!r})"


_CONTEXT: _ContextBase | None = None


#: what ``Run.get_context()`` returns: the live run on a node, an offline run elsewhere (same methods)
RunContext = _ContextBase


def get_context(environ: Mapping[str, str] | None = None) -> _ContextBase:
    global _CONTEXT
    env = os.environ if environ is None else environ
    if environ is None and _CONTEXT is not None:
        return _CONTEXT
    run_id, channel = env.get(ENV_RUN_ID), env.get(ENV_CHANNEL)
    resumed = env.get(ENV_RESUMED_FROM, "")
    ctx: _ContextBase = (LiveRunContext(run_id, channel, env.get(ENV_EXPERIMENT, ""), env.get(ENV_PARENT),
                                        int(resumed) if resumed.isdigit() else None) if run_id and channel
                         else OfflineRun())
    if environ is None:
        _CONTEXT = ctx
    return ctx
