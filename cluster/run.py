"""A run, seen from the submitter (or re-attached later): status, details, logs, metrics, files, models."""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster import layout, runinfo
from cluster.context import RunContext
from cluster.context import get_context as _get_context
from cluster.errors import NotFoundError, RunFailedError, UsageError, WaitTimeoutError
from cluster.records import RunRecord, RunStatus

if TYPE_CHECKING:
    from cluster.experiment import Experiment
    from cluster.model import Model
    from cluster.workspace import Workspace


class Run:
    """``Run(experiment, run_id)`` re-attaches to any run; ``Run.get_context()`` is for inside train.py."""

    def __init__(self, experiment: Experiment, run_id: str) -> None:
        from cluster import validation

        self.experiment = experiment
        self.id = validation.run_id(run_id)
        self._prefix: str | None = None

    # -- inside the training script -----------------------------------------------------------------
    @staticmethod
    def get_context() -> RunContext:
        """The live run when launched by a node, else an offline run that prints what it logs."""
        return _get_context()

    @classmethod
    def get(cls, workspace: Any, run_id: str) -> Run:
        """Any run by id alone (Azure's ``Run.get(ws, run_id)``); a sweep comes back as a HyperDriveRun."""
        from cluster import validation

        if not hasattr(type(workspace), "get_run"):
            raise UsageError(f"Run.get: workspace must be a Workspace, got {type(workspace).__name__}")
        run: Run = workspace.get_run(validation.run_id(run_id))
        return run

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def _ws(self) -> Workspace:
        return self.experiment.workspace

    @property
    def prefix(self) -> str:
        if self._prefix is None:
            self._prefix = self._ws.runs.prefix(self.id)
        return self._prefix

    def _record(self) -> RunRecord:
        return self._ws.runs.record(self.id)

    def files_prefix(self) -> str:
        """The committed attempt's folder (see ``RunRecord.files_prefix``): what readers show as the run's files."""
        return str(_ride_through(lambda: self._record().files_prefix, None))

    # -- status and details -----------------------------------------------------------------------
    def get_status(self) -> str:
        return self._ws.runs.status(self.id).value

    @property
    def status(self) -> str:
        return self.get_status()

    def get_details(self) -> dict[str, Any]:
        rec = self._record()
        spec = self._ws.runs.spec(self.id)
        stamps = rec.timestamps
        return {
            "runId": rec.run_id, "experiment": rec.experiment, "status": rec.status.value,
            "target": rec.pool, "node": rec.node, "attempt": rec.attempt,
            "startTimeUtc": stamps.get(RunStatus.RUNNING.value) or stamps.get(RunStatus.PREPARING.value),
            "endTimeUtc": next((stamps[s.value] for s in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED)
                                if s.value in stamps), None),
            "timestamps": dict(stamps), "snapshot": spec.snapshot, "script": spec.entry_script,
            "arguments": list(rec.arguments), "tags": runinfo.get_tags(self._ws.store, rec.prefix, rec),
            "parent": rec.parent_id,
            "error": rec.error.to_dict() if rec.error else None, "attempts": list(rec.attempts),
            "isolation": rec.attempts[-1].get("isolation") if rec.attempts else None,
            "host": rec.attempts[-1].get("host") if rec.attempts else None,  # the node's host name
            "prefix": f"{self._ws.settings.cluster_bucket}/{rec.prefix}",
            "properties": runinfo.details_properties(self._ws.store, rec.prefix),
        }

    def wait_for_completion(self, show_output: bool = False, timeout: float | None = None,
                            raise_on_error: bool = True, wait_post_processing: bool = False) -> dict[str, Any]:
        """Block until the run is final; with ``show_output`` stream its log live."""
        if timeout is not None:
            from cluster import validation

            timeout = validation.positive_number("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        if show_output:
            print(f"RunId: {self.id}\nStatus: {self.get_status()}\n", flush=True)
            for _id, line in self.stream_log(deadline=deadline):
                print(line, flush=True)
        while not _ride_through(lambda: self._ws.runs.status(self.id).is_final, deadline):
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeoutError(f"run {self.id} is still {self.get_status()} after {timeout}s",
                                       hint="wait longer, or check it with `cluster runs show`")
            time.sleep(0.2)
        details = self.get_details()
        if show_output:
            print(f"\nExecution summary\n=================\nRunId: {self.id}\nStatus: {details['status']}", flush=True)
        if raise_on_error and details["status"] == RunStatus.FAILED.value:
            err = details["error"] or {}
            tail = "\n".join(err.get("stderr_tail", [])[-10:])
            raise RunFailedError(f"run {self.id} failed: {err.get('message', 'unknown cause')}"
                                 + (f"\n--- last stderr lines ---\n{tail}" if tail else ""),
                                 hint=f"full log: `cluster runs logs {self.id}`")
        return details

    def stream_log(self, after: str = "0-0", poll_ms: int = 1000,
                   deadline: float | None = None) -> Iterator[tuple[str, str]]:
        """Yield ``(entry_id, line)`` of the run's log from ``after`` on, until the log ends (or, if given,
        ``time.monotonic()`` passes ``deadline``)."""
        if not isinstance(after, str) or not re.fullmatch(r"\d+(-\d+)?", after):
            raise UsageError(f"invalid log entry {after!r}",
                             hint="give an entry id as printed when a follow was interrupted, e.g. 1717171717171-0")
        return self._follow(after, poll_ms, deadline)

    def _follow(self, after: str, poll_ms: int, deadline: float | None) -> Iterator[tuple[str, str]]:
        """The log, resumed from the last entry seen when Redis or the object store stops answering for a while
        (a server restart): nothing lost, nothing repeated."""
        from cluster import logstream  # not at import: train.py imports this module and needs no Redis client

        runs, last, failing_since = self._ws.runs, after, None
        while True:
            try:
                for entry_id, line in logstream.follow(self._ws.redis, self._ws.store, self.id, self.files_prefix,
                                                       after=last, poll_ms=poll_ms, deadline=deadline,
                                                       is_final=lambda: runs.status(self.id).is_final):
                    failing_since = None
                    if not entry_id.startswith("archive-"):
                        last = entry_id
                    yield entry_id, line
                return
            except Exception as e:
                if not _transient(e):
                    raise
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > RIDE_THROUGH_SECONDS or (
                        deadline is not None and time.monotonic() > deadline):
                    raise
                time.sleep(1.0)

    def cancel(self) -> str:
        """Queued: it never starts. Running: the node stops its whole process tree. Returns what happened."""
        return self._ws.runs.cancel(self.id)

    # -- metrics ----------------------------------------------------------------------------------
    def _events(self) -> list[dict[str, Any]]:
        """Every event the script logged (its metrics, ``run.fail``, its child runs'), from one read of the record:
        the committed attempt's archive once the run is final, else the live stream."""
        from cluster import metrics

        record = self._record()
        return metrics.read(self._ws.redis, self._ws.store, self.id, record.files_prefix,
                            final=record.status.is_final)

    def get_metrics(self, name: str | None = None) -> dict[str, Any]:
        from cluster import metrics

        values: dict[str, Any] = _ride_through(lambda: metrics.aggregate(self._events()), None)
        if name is not None:
            return {name: values[name]} if name in values else {}
        return values

    # -- files ------------------------------------------------------------------------------------
    def get_file_names(self) -> list[str]:
        """outputs/... and logs/... of the run (what the node uploaded)."""
        return self._file_names(self.files_prefix())

    def _file_names(self, prefix: str) -> list[str]:
        names = []
        for folder in (layout.LOGS_DIR, layout.OUTPUTS_DIR):
            names += [o.key[len(prefix):] for o in self._ws.store.list(f"{prefix}{folder}/")]
        return sorted(names)

    def download_file(self, name: str, output_file_path: str | os.PathLike[str] | None = None) -> str:
        from cluster import validation

        rel = _check_rel(name)
        target = validation.path_like("output_file_path", output_file_path) if output_file_path \
            else Path(Path(rel).name)
        if target.is_dir():
            target = target / Path(rel).name
        prefix = self.files_prefix()
        if not self._ws.store.exists(prefix + rel):
            raise NotFoundError(f"run {self.id} has no file {rel!r}", hint="see run.get_file_names()")
        self._ws.store.get_file(prefix + rel, target)
        return str(target)

    def download_files(self, prefix: str | None = None,
                       output_directory: str | os.PathLike[str] | None = None) -> list[str]:
        from cluster import validation

        out = validation.local_dir_target("output_directory", output_directory or ".")
        rel = None if prefix is None else _check_rel(prefix)
        files = self.files_prefix()  # one read of the record for the listing and every download
        names = self._file_names(files)
        chosen = [n for n in names if rel is None or n.startswith(rel)]
        if rel is not None and not chosen:
            raise NotFoundError(f"run {self.id} has no files under {rel!r}",
                                hint=f"its files: {', '.join(names[:10]) or '(none)'}"
                                + (f" and {len(names) - 10} more" if len(names) > 10 else ""))
        paths = []
        for name in chosen:
            target = out / name
            self._ws.store.get_file(files + name, target)
            paths.append(str(target))
        return paths

    # -- tags and properties ----------------------------------------------------------------------
    def tag(self, key: str, value: Any = None) -> None:
        """Set one tag (Azure's ``run.tag``; a tag without a value is the empty string)."""
        runinfo.set_tags(self._ws.store, self.prefix, {key: "" if value is None else value})

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Add or change several tags; a value of None removes that tag."""
        runinfo.set_tags(self._ws.store, self.prefix, tags)

    def remove_tags(self, tags: list[str]) -> None:
        runinfo.set_tags(self._ws.store, self.prefix, dict.fromkeys(tags))

    def get_tags(self) -> dict[str, str]:
        return runinfo.get_tags(self._ws.store, self.prefix, self._record())

    def add_properties(self, properties: dict[str, Any]) -> None:
        """Add properties: immutable once set (ConflictError), as in Azure."""
        runinfo.add_properties(self._ws.store, self.prefix, properties)

    def get_properties(self) -> dict[str, str]:
        """The run's properties (``git.commit``, ``git.dirty``, ... recorded at submit, plus those added)."""
        return runinfo.get_properties(self._ws.store, self.prefix)

    @property
    def parent(self) -> Run | None:
        parent_id = self._record().parent_id
        return None if parent_id is None else Run.get(self._ws, parent_id)

    def get_children(self) -> list[Any]:
        """Child runs the script made with ``run.child_run(name)`` (a sweep's children: HyperDriveRun)."""
        from cluster.childrun import script_children

        return script_children(self, self._events())

    # -- re-run -----------------------------------------------------------------------------------
    def resubmit(self, arguments: Any = None, tags: dict[str, str] | None = None) -> Run:
        """Run this run again: the same snapshot, environment, data and pool, new ``arguments`` if given. The new
        run's ``resubmitted_from`` property names this one."""
        run: Run = self.experiment.resubmit(self, arguments, tags)
        return run

    # -- models -----------------------------------------------------------------------------------
    def register_model(self, model_name: str, model_path: str, tags: dict[str, str] | None = None,
                       description: str | None = None, **kwargs: Any) -> Model:
        from cluster import validation
        from cluster.model import Model

        kwargs = validation.warn_ignored("register_model", kwargs, AZURE_REGISTER_MODEL_IGNORED)
        validation.check_kwargs("register_model", kwargs, known=("model_name", "model_path", "tags", "description"))

        return Model.register_from_run(self, model_name, model_path, tags=tags, description=description)

    # -- display ----------------------------------------------------------------------------------
    def __repr__(self) -> str:
        try:
            status = self.get_status()
        except Exception:
            status = "?"
        return f"Run(experiment={self.experiment.name!r}, id={self.id!r}, status={status!r})"

    def _repr_html_(self) -> str:
        d = self.get_details()
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                       for k, v in (("Experiment", d["experiment"]), ("Id", d["runId"]), ("Status", d["status"]),
                                    ("Target", d["target"]), ("Node", d["node"]), ("Attempt", d["attempt"]),
                                    ("Arguments", " ".join(d["arguments"])), ("Object store", d["prefix"])))
        metric_rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                              for k, v in self.get_metrics().items())
        return (f"<table>{rows}</table>" + (f"<b>Metrics</b><table>{metric_rows}</table>" if metric_rows else ""))


#: Azure's register_model metadata with no effect here: one warning each, then ignored
AZURE_REGISTER_MODEL_IGNORED = ("properties", "model_framework", "model_framework_version", "datasets",
                                "sample_input_dataset", "sample_output_dataset", "resource_configuration")


def _check_rel(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"a run's file name must be a non-empty string, got {name!r}",
                         hint="see run.get_file_names(), e.g. 'outputs/model.pkl'")
    rel = name.replace("\\", "/").lstrip("/")
    if any(p == ".." for p in rel.split("/")):
        raise UsageError(f"file name {name!r} may not contain '..'")
    return rel



#: how long a client keeps trying while Redis or the object store does not answer (a restart) before raising
RIDE_THROUGH_SECONDS = 120.0


def _transient(e: BaseException) -> bool:
    import redis

    from cluster.errors import CredentialsError, ServiceError

    if isinstance(e, CredentialsError):
        return False
    return isinstance(e, ServiceError | redis.ConnectionError | redis.TimeoutError | ConnectionError)


def _ride_through(fn: Any, deadline: float | None) -> Any:
    """``fn()``, retried with backoff while the servers do not answer, for up to RIDE_THROUGH_SECONDS (or the
    caller's deadline); then the error reaches the caller."""
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

    budget = RIDE_THROUGH_SECONDS if deadline is None else max(0.0, min(RIDE_THROUGH_SECONDS,
                                                                        deadline - time.monotonic()))
    retrying = Retrying(retry=retry_if_exception(_transient), stop=stop_after_delay(budget), reraise=True,
                        wait=wait_exponential(multiplier=0.2, max=5.0))
    return retrying(fn)
