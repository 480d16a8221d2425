"""Experiments group runs; ``submit`` packages the source directory and queues a run."""

from __future__ import annotations

import logging
import secrets
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from cluster import layout, validation
from cluster.datareference import display_argument
from cluster.errors import UsageError
from cluster.records import RunRecord, RunSpec, RunStatus, now_iso
from cluster.snapshot import build_snapshot, fingerprint

if TYPE_CHECKING:
    from cluster.estimator import RunConfiguration
    from cluster.run import Run
    from cluster.workspace import Workspace

log = logging.getLogger(__name__)


class Experiment:
    def __init__(self, workspace: Workspace, name: str) -> None:
        if not hasattr(type(workspace), "store") or not hasattr(type(workspace), "runs"):
            raise UsageError(f"Experiment: workspace must be a Workspace, got {type(workspace).__name__}",
                             hint="Experiment(workspace=Workspace.from_config(), name='my-experiment')")
        self.workspace = workspace
        self.name = layout.check_name("experiment", name)

    def __repr__(self) -> str:
        return f"Experiment(name={self.name!r}, workspace={self.workspace.name!r})"

    def _repr_html_(self) -> str:
        return f"<b>Experiment</b> {self.name} in workspace {self.workspace.name}"

    def resubmit(self, run: Run, arguments: Any = None, tags: Mapping[str, str] | None = None) -> Run:
        """``run.resubmit(...)``: see :func:`resubmit_run`."""
        return resubmit_run(run, arguments, tags)

    def submit(self, config: Any, tags: Mapping[str, str] | None = None, **kwargs: Any) -> Run:
        """Queue a run (Estimator / ScriptRunConfig) or a sweep (HyperDriveConfig); returns at once."""
        validation.check_kwargs("Experiment.submit", kwargs, known=("config", "tags"))
        tag_map = validation.string_map("tags", tags, keys="tag name")
        if hasattr(config, "submit_to"):  # a sweep drives its own children
            sweep: Run = config.submit_to(self, tags=tag_map)  # a HyperDriveRun
            return sweep
        if not callable(getattr(config, "run_config", None)):
            raise UsageError(f"Experiment.submit: config must be an Estimator, a ScriptRunConfig or a "
                             f"HyperDriveConfig, got {type(config).__name__}",
                             hint="e.g. exp.submit(config=Estimator(source_directory='src', entry_script='train.py'))")
        rc = config.run_config()
        check_data_references(self.workspace, rc.arguments)
        return submit_run(self, rc, tags=tag_map)

    def get_runs(self, include_children: bool = False, tags: Any = None, properties: Any = None,
                 type: str | None = None, status: str | None = None) -> Iterator[Run]:
        """Runs of this experiment, newest first (read from the object store: survives a Redis wipe).
        With ``include_children`` a sweep's child runs are listed too. As in Azure, ``tags`` / ``properties``
        (a name, a list of names, or a dict of name -> value or None), ``type`` ('azureml.scriptrun' or
        'hyperdrive') and ``status`` ('Completed', ...) keep only the runs that match all of them."""
        from cluster import runinfo
        from cluster.records import RunStatus
        from cluster.run import Run

        want_tags, want_props = runinfo.tag_filter(tags), runinfo.tag_filter(properties)
        want_type = runinfo.check_type(type)
        if status is not None:
            try:
                status = RunStatus(status).value
            except ValueError:
                raise UsageError(f"unknown status {status!r}",
                                 hint=f"one of {', '.join(s.value for s in RunStatus)}") from None
        runs = self.workspace.runs
        ids = runs.list_all_run_ids(self.name) if include_children else runs.list_run_ids(self.name)
        ids.sort(key=run_sort_key, reverse=True)
        filtered = any(x is not None for x in (tags, properties, type, status))
        for run_id in ids:
            if not filtered:
                yield Run(self, run_id)
                continue
            record = runs.record(run_id)  # read once: for the filters and for the kind of run
            if status is not None and record.status.value != status:
                continue
            if want_type is not None and runinfo.run_type(record) != want_type:
                continue
            if tags is not None and not want_tags(runinfo.get_tags(self.workspace.store, record.prefix, record)):
                continue
            if properties is not None and not want_props(runinfo.get_properties(self.workspace.store, record.prefix)):
                continue
            yield self.workspace.run_of(record)


def check_data_references(ws: Workspace, arguments: Any) -> None:
    """Every data reference among a run's arguments names a known datastore and a folder that has data."""
    from cluster.datareference import DataReference

    for arg in arguments:
        if DataReference.is_reference(arg):
            ref = DataReference.from_dict(arg)
            ws.datastore(ref.datastore).check_reference(ref)


def run_sort_key(run_id: str) -> tuple[int, str]:
    parts = run_id.rsplit("_", 2)
    try:
        return int(parts[-2]), run_id
    except (ValueError, IndexError):
        return 0, run_id


def new_run_id(experiment: str) -> str:
    return f"{experiment}_{int(time.time() * 1000)}_{secrets.token_hex(4)}"


def upload_snapshot(ws: Workspace, rc: RunConfiguration) -> str:
    """Package the source directory; upload it unless the object store already has that digest."""
    key = fingerprint(rc.source_directory)
    if key is not None and key in ws.uploaded_snapshots:
        return ws.uploaded_snapshots[key]
    with tempfile.TemporaryDirectory(prefix="cluster-snapshot-") as tmp:
        snap = build_snapshot(rc.source_directory, max_bytes=ws.settings.max_snapshot_bytes, work_dir=tmp)
        if not ws.store.exists(layout.snapshot_key(snap.digest)):
            ws.store.put_json(layout.snapshot_manifest_key(snap.digest), snap.manifest())
            ws.store.put_file(layout.snapshot_key(snap.digest), snap.archive)
    if key is not None and fingerprint(rc.source_directory) == key:  # unchanged while it was packed
        ws.uploaded_snapshots[key] = snap.digest
    return snap.digest


def submit_run(experiment: Experiment, rc: RunConfiguration, *, tags: dict[str, str],
               parent: RunRecord | None = None, snapshot: str | None = None,
               properties: Mapping[str, str] | None = None) -> Run:
    from cluster.run import Run

    ws = experiment.workspace
    if properties is None and parent is None:  # the Git state of the source, recorded as Azure does
        from cluster import runinfo

        properties = runinfo.git_properties(rc.source_directory)
    layout.check_name("pool", rc.pool)
    digest = snapshot or upload_snapshot(ws, rc)
    run_id = new_run_id(experiment.name)
    prefix = layout.run_prefix(experiment.name, run_id, parent.prefix if parent else None)
    spec = RunSpec(run_id=run_id, experiment=experiment.name, snapshot=digest, entry_script=rc.entry_script,
                   arguments=rc.arguments, pool=rc.pool, pip_packages=rc.pip_packages,
                   conda_packages=rc.conda_packages, environment_variables=rc.environment_variables,
                   max_run_duration_seconds=rc.max_run_duration_seconds, tags=tags,
                   parent_id=parent.run_id if parent else None, prefix=prefix, submitted_at=now_iso())
    record = RunRecord(run_id=run_id, experiment=experiment.name, status=RunStatus.QUEUED, prefix=prefix,
                       pool=rc.pool, tags=tags, parent_id=spec.parent_id,
                       arguments=tuple(display_argument(a) for a in rc.arguments)).with_status(RunStatus.QUEUED)
    if properties:  # before the run is queued: a reader never sees the run without them
        ws.store.put_json(prefix + layout.RUN_PROPERTIES, dict(properties))
    ws.runs.create(spec, record)
    ws.enqueue(run_id, rc.pool)
    if parent is None:  # a sweep's children are submitted by the controller: nobody reads a note there
        _warn_if_no_nodes(ws, rc.pool)
    return Run(experiment, run_id)


def resubmit_run(run: Run, arguments: Any = None, tags: Mapping[str, str] | None = None) -> Run:
    """A new run from ``run``'s spec: its snapshot, packages, variables, data references and pool; ``arguments``
    (a list) replace the original ones when given. Linked: the new run's ``resubmitted_from`` property."""
    from pathlib import Path

    from cluster.estimator import RunConfiguration, script_arguments

    ws = run.experiment.workspace
    spec = ws.runs.spec(run.id)
    args = tuple(spec.arguments) if arguments is None else tuple(script_arguments(arguments))
    rc = RunConfiguration(Path("."), spec.entry_script, args, spec.pool, spec.pip_packages, spec.conda_packages,
                          dict(spec.environment_variables), spec.max_run_duration_seconds)
    check_data_references(ws, rc.arguments)
    tag_map = {**{k: v for k, v in spec.tags.items() if k != "kind"},
               **validation.string_map("tags", tags, keys="tag name")}
    new = submit_run(run.experiment, rc, tags=tag_map, snapshot=spec.snapshot,
                     properties={"resubmitted_from": run.id, **_source_properties(ws, spec.prefix)})
    return new


def _source_properties(ws: Workspace, prefix: str) -> dict[str, str]:
    """The Git properties recorded for a run's source (a resubmitted run ran the same snapshot)."""
    from cluster import runinfo

    return {k: v for k, v in runinfo.get_properties(ws.store, prefix).items() if k.startswith("git.")}


def _warn_if_no_nodes(ws: Workspace, pool: str) -> None:
    if pool in ws.served_pools:
        return
    if ws.store.exists(layout.pool_key(pool)):
        ws.served_pools.add(pool)  # a compute target: the controller scales the pool; no need to look again
        return
    for name in ws.redis.smembers(layout.RK_NODES):
        if ws.redis.hget(layout.rk_node(str(name)), "pool") == pool:
            ws.served_pools.add(pool)
            return
    log.warning("note: no node is serving pool %r yet; the run waits in the queue until one starts "
                "(`cluster worker --pool %s`, or create the pool as a compute target)", pool, pool)
