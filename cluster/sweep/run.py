"""``HyperDriveRun``: the parent run of a sweep, seen from the submitter (or re-attached later by id)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from cluster import layout, tables, validation
from cluster.errors import NotFoundError, RunFailedError, UsageError, WaitTimeoutError
from cluster.experiment import Experiment
from cluster.records import RunStatus, is_sweep, now_iso
from cluster.run import Run
from cluster.sweep import state

if TYPE_CHECKING:
    from cluster.sweep.sweepspec import SweepSpec
    from cluster.workspace import Workspace


class HyperDriveRun(Run):
    """A sweep: its children are ordinary runs; the controller samples, stops and submits them."""

    def __init__(self, experiment: Experiment, run_id: str) -> None:
        super().__init__(experiment, run_id)
        self._spec: SweepSpec | None = None

    @classmethod
    def from_id(cls, ws: Workspace, run_id: str) -> HyperDriveRun:
        """Re-attach to a sweep by its parent run id (UsageError if that run is not a sweep)."""
        record = ws.runs.record(validation.run_id(run_id))
        if not is_sweep(record):
            raise UsageError(f"run {run_id} is not a sweep", hint="`cluster sweep list` shows the sweeps")
        return cls(Experiment(ws, record.experiment), run_id)

    # -- plumbing ---------------------------------------------------------------------------------
    @property
    def spec(self) -> SweepSpec:
        if self._spec is None:
            self._spec = state.load_spec(self._ws, self.prefix)
        return self._spec

    def _reader(self) -> state.SweepReader:
        return state.SweepReader(self._ws, self.id, self.prefix, self.spec.primary_metric_name)

    def _children(self, *, with_metrics: bool = True) -> list[state.ChildInfo]:
        return self._reader().children(with_metrics=with_metrics)

    # -- children and results ---------------------------------------------------------------------
    def get_children(self) -> list[Run]:
        """The child runs, in the order they were sampled."""
        return [Run(self.experiment, c.run_id) for c in self._children(with_metrics=False)]

    def get_children_sorted_by_primary_metric(self, top: int = 0, reverse: bool = False,
                                              discard_no_metric: bool = False) -> list[dict[str, Any]]:
        """Children as dicts (``run_id``, ``hyperparameters``, ``best_primary_metric``, ``status``, plus
        ``ranked``, ``rank``, ``note``...), best first. Only children that Completed and reported the primary
        metric are ranked; failed, stopped, still running or silent children follow, ``ranked`` False with a
        ``note`` -- never mixed into the ranking. ``top`` > 0 keeps the first ``top``; ``reverse`` lists the
        ranked ones worst first; ``discard_no_metric`` drops the unranked ones."""
        if isinstance(top, bool) or not isinstance(top, int) or top < 0:
            raise UsageError(f"top must be an int >= 0, got {top!r}")
        rows = state.child_rows(self._children(), self.spec.goal, self.spec.primary_metric_name)
        ranked = [r for r in rows if r["ranked"]]
        rest = [] if discard_no_metric else [r for r in rows if not r["ranked"]]
        if reverse:
            ranked.reverse()
        rows = ranked + rest
        return rows[:top] if top else rows

    def get_best_run_by_primary_metric(self, include_failed: bool = True, include_canceled: bool = True,
                                       include_resume_from_runs: bool = True) -> Run | None:
        """The child with the best primary metric, or None if none reported it. As in Azure, children that failed
        or were canceled (stopped early by the policy) count too if they logged the metric; pass
        ``include_failed=False`` / ``include_canceled=False`` to rank only those that completed."""
        for flag, value in (("include_failed", include_failed), ("include_canceled", include_canceled),
                            ("include_resume_from_runs", include_resume_from_runs)):
            if not isinstance(value, bool):
                raise UsageError(f"{flag} must be True or False, got {value!r}")
        allowed = {RunStatus.COMPLETED.value, *((RunStatus.FAILED.value,) if include_failed else ()),
                   *((RunStatus.CANCELED.value,) if include_canceled else ())}
        rows = state.child_rows(self._children(), self.spec.goal, self.spec.primary_metric_name)
        candidates = [r for r in rows if r["status"] in allowed and r["best_primary_metric"] is not None]
        if not candidates:
            return None
        best = min(candidates, key=state.best_first(self.spec.goal))
        return Run(self.experiment, best["run_id"])

    def get_metrics(self, name: str | None = None) -> dict[str, Any]:
        """Every child's metrics: ``{child run id: {metric name: value}}``."""
        return {run.id: run.get_metrics(name) for run in self.get_children()}

    def get_hyperparameters(self) -> dict[str, dict[str, Any]]:
        """``{child run id: sampled hyperparameters}``."""
        return {c.run_id: dict(c.params) for c in self._children(with_metrics=False)}

    def get_summary(self, live: bool = False) -> dict[str, Any]:
        """The sweep's summary as the controller last stored it (``summary.json``); with ``live`` (or before
        the controller wrote one) built now from the children."""
        try:
            stored = dict(self._ws.store.get_json(self.prefix + state.SUMMARY))
        except NotFoundError:
            stored = {}
        if stored and not live:
            return stored
        return state.build_summary(self.spec, self._record(), self._children(), end_reason=stored.get("end_reason"))

    # -- control ----------------------------------------------------------------------------------
    def cancel(self) -> str:
        """Stop sampling and cancel every child still queued or running. Returns 'requested', or the final
        status if the sweep had already ended."""
        record = self._record()
        if record.status.is_final:
            return record.status.value
        ws = self._ws
        ws.store.put_json(self.prefix + state.CANCEL, {"at": now_iso()})  # survives a Redis wipe
        ws.redis.hset(layout.rk_run(self.id), "cancel", "1")
        for child in self._children(with_metrics=False):
            if not child.final and child.record is not None:
                ws.runs.cancel(child.run_id)
        return "requested"

    def wait_for_completion(self, show_output: bool = False, timeout: float | None = None,
                            raise_on_error: bool = True, wait_post_processing: bool = False) -> dict[str, Any]:
        """Block until the sweep has ended; ``show_output`` prints a line as each child starts and ends, then
        a table of the results."""
        if timeout is not None:
            timeout = validation.positive_number("timeout", timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        seen: dict[str, str] = {}
        if show_output:
            spec = self.spec
            print(f"RunId: {self.id}\nStatus: {self.get_status()}\nSweep: {spec.sampling.kind} sampling of "
                  f"{', '.join(spec.sampling.space)}; {spec.primary_metric_name} ({spec.goal.value}); "
                  f"max {spec.max_total_runs} runs, {spec.max_concurrent_runs} at a time\n", flush=True)
        reader = self._reader() if show_output else None
        while True:
            final = self._ws.runs.status(self.id).is_final
            if reader is not None:
                self._progress(reader, seen)
            if final:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise WaitTimeoutError(f"sweep {self.id} is still {self.get_status()} after {timeout}s",
                                       hint=f"wait longer, or check it with `cluster sweep show {self.id}`")
            time.sleep(1.0 if show_output else 0.2)
        details = self.get_details()
        if show_output:
            summary = self.get_summary()
            print(f"\nExecution summary\n=================\nRunId: {self.id}\nStatus: {details['status']}"
                  + (f" ({summary.get('end_reason')})" if summary.get("end_reason") else ""), flush=True)
            print(format_table(summary.get("children", []), self.spec.primary_metric_name), flush=True)
        if raise_on_error and details["status"] == RunStatus.FAILED.value:
            err = details["error"] or {}
            raise RunFailedError(f"sweep {self.id} failed: {err.get('message', 'unknown cause')}",
                                 hint=f"see `cluster sweep show {self.id}`")
        return details

    def _progress(self, reader: state.SweepReader, seen: dict[str, str]) -> None:
        for child in reader.children():
            before = seen.get(child.run_id)
            now = child.status.value
            if before == now:
                continue
            seen[child.run_id] = now
            params = " ".join(f"{k}={_fmt(v)}" for k, v in child.params.items())
            if before is None:
                print(f"[{child.index}] {child.run_id} queued: {params}", flush=True)
            if child.status is RunStatus.RUNNING:
                print(f"[{child.index}] {child.run_id} running", flush=True)
            elif child.final:
                best = state.best_value(child.series, self.spec.goal)
                metric = f"{self.spec.primary_metric_name}={_fmt(best)}" if best is not None else "no metric"
                why = f" -- stopped by {child.stopped.get('by')}" if child.stopped and child.status is \
                    RunStatus.CANCELED else ""
                err = f" -- {child.record.error.message}" if child.record and child.record.error else ""
                print(f"[{child.index}] {child.run_id} {now}: {metric}{why}{err}", flush=True)

    def __repr__(self) -> str:
        try:
            status = self.get_status()
        except Exception:
            status = "?"
        return f"HyperDriveRun(experiment={self.experiment.name!r}, id={self.id!r}, status={status!r})"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_table(rows: list[dict[str, Any]], metric: str) -> str:
    """Children rows (as in summary.json) as a text table: rank, run, status, metric, duration, parameters."""
    if not rows:
        return "(no child runs)"
    names: list[str] = []
    for row in rows:
        for name in row.get("hyperparameters", {}):
            if name not in names:
                names.append(name)
    header = ["RANK", "RUN", "STATUS", metric.upper(), "DURATION", *names, "NOTE"]
    lines = []
    for row in rows:
        best = row.get("best_primary_metric")
        dur = row.get("duration_seconds")
        lines.append([str(row.get("rank") or "-"), row["run_id"], row["status"],
                      _fmt(best) if best is not None else "-", f"{dur:.1f}s" if dur is not None else "-",
                      *(_fmt(row.get("hyperparameters", {}).get(n, "")) for n in names), row.get("note", "")])
    return tables.format_table(lines, header)

