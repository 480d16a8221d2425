"""A sweep's state in the object store and Redis: where it lives, how it is read back, how it is summarized.

Under the parent run's folder (``experiments/<exp>/runs/<parent_id>/``), next to its ``spec.json`` and
``run.json``::

    sweep.json                     the sweep's specification (written once, at submit)
    intents/<index>.json           the parameters of child <index>, written BEFORE that child is submitted
    children/<child_id>/...        the child runs (ordinary runs; spec tags: parent, sweep_index, hyperparameters)
    children/<child_id>/stopped.json   why the sweep stopped that child (policy and the values compared)
    cancel.json                    present once the user canceled the sweep
    summary.json                   per child: parameters, status, primary metric, duration, stopped-by

Plus ``index/sweeps/all/<parent_id>`` (every sweep) and ``index/sweeps/active/<parent_id>`` (sweeps not
finished yet: what the controller rebuilds its Redis set from after a wipe or a restart).

Redis: ``cluster:sweeps:active`` (set of parent ids the controller drives), ``cluster:sweeps:synced``
(absent after a wipe: rebuild the set), ``cluster:sweep:<id>:lock`` (one driver per sweep at a time). The
parent's run hash (``cluster:run:<id>``) is written like any run's, but the parent is never queued and
never in a pool's active set: no node ever claims it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cluster import layout, metrics
from cluster.datareference import display_argument
from cluster.errors import NotFoundError, PayloadError
from cluster.records import KIND_SWEEP, RunRecord, RunSpec, RunStatus, now_iso, parse_iso
from cluster.schema import Record, WholeNumber, load, record
from cluster.sweep.policy import PrimaryMetricGoal, coerce_goal
from cluster.sweep.sweepspec import SweepSpec

if TYPE_CHECKING:
    from cluster.estimator import RunConfiguration
    from cluster.workspace import Workspace

# paths and keys are built in cluster/layout.py (short names here for this package)
SWEEP_SPEC = layout.SWEEP_SPEC
SUMMARY = layout.SWEEP_SUMMARY
CANCEL = layout.SWEEP_CANCEL
STOPPED = layout.SWEEP_STOPPED
INTENTS_DIR = layout.SWEEP_INTENTS_DIR
CHILDREN_DIR = layout.CHILDREN_DIR
ALL_SWEEPS = layout.ALL_SWEEPS_PREFIX
ACTIVE_SWEEPS = layout.ACTIVE_SWEEPS_PREFIX

RK_ACTIVE = layout.RK_SWEEPS_ACTIVE
RK_SYNCED = layout.RK_SWEEPS_SYNCED
rk_lock = layout.rk_sweep_lock
intent_key = layout.sweep_intent_key

KIND_CHILD = "sweep-child"


@record
class Intent(Record):
    """``intents/<index>.json``: the parameters of child ``index``, stored before that child is submitted."""

    __what__ = "sweep intent {index!r}"

    index: WholeNumber
    params: dict[str, Any]
    at: str = ""  # when it was written (ISO 8601)


def child_prefix(parent_prefix: str, child_id: str) -> str:
    return layout.run_prefix("", child_id, parent_prefix)


# ---- the parent run -----------------------------------------------------------------------------

def create_parent(ws: Workspace, spec: SweepSpec, rc: RunConfiguration, tags: dict[str, str]) -> RunRecord:
    """Write the parent's spec, sweep spec and record (object store first), then register it in Redis."""
    prefix = layout.run_prefix(spec.experiment, spec.parent_id)
    tags = {**tags, "kind": KIND_SWEEP}
    run_spec = RunSpec(run_id=spec.parent_id, experiment=spec.experiment, snapshot=spec.snapshot,
                       entry_script=rc.entry_script, arguments=rc.arguments, pool=rc.pool,
                       pip_packages=rc.pip_packages, conda_packages=rc.conda_packages,
                       environment_variables=rc.environment_variables,
                       max_run_duration_seconds=rc.max_run_duration_seconds, tags=tags, prefix=prefix,
                       submitted_at=now_iso(spec.created))
    record = (RunRecord(run_id=spec.parent_id, experiment=spec.experiment, status=RunStatus.QUEUED, prefix=prefix,
                        pool=rc.pool, tags=tags, arguments=tuple(display_argument(a) for a in rc.arguments))
              .with_status(RunStatus.QUEUED, at=spec.created).with_status(RunStatus.RUNNING, at=spec.created))
    ws.store.put_many([  # independent objects: written concurrently, all before Redis knows the sweep
        (prefix + layout.RUN_SPEC, _json(run_spec.to_dict()), "application/json"),
        (prefix + SWEEP_SPEC, _json(spec.to_dict()), "application/json"),
        (prefix + layout.RUN_RECORD, _json(record.to_dict()), "application/json"),
        (layout.run_index_key(spec.parent_id), prefix.encode(), "text/plain"),
        (ALL_SWEEPS + spec.parent_id, prefix.encode(), "text/plain"),
        (ACTIVE_SWEEPS + spec.parent_id, prefix.encode(), "text/plain"),
    ])
    seed_parent(ws, record)
    pipe = ws.redis.pipeline()
    pipe.sadd(RK_ACTIVE, spec.parent_id)
    pipe.lpush(layout.RK_CONTROLLER_WAKE, "1")  # the controller samples the first children now, not next tick
    pipe.ltrim(layout.RK_CONTROLLER_WAKE, 0, 0)
    pipe.execute()
    return record


def _json(obj: object) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode()


def seed_parent(ws: Workspace, record: RunRecord) -> None:
    """The parent's Redis hash, like any run's -- but never in a pool's active set (no node may claim it)."""
    ws.redis.hset(layout.rk_run(record.run_id), mapping={
        "record": json.dumps(record.to_dict()), "status": record.status.value, "attempt": record.attempt,
        "prefix": record.prefix, "pool": record.pool,
    })


def write_parent(ws: Workspace, record: RunRecord) -> None:
    """Only the sweep's driver changes the parent after submit: object store first, then Redis."""
    ws.store.put_json(record.prefix + layout.RUN_RECORD, record.to_dict())
    seed_parent(ws, record)


def load_spec(ws: Workspace, prefix: str) -> SweepSpec:
    return SweepSpec.from_dict(ws.store.get_json(prefix + SWEEP_SPEC))


def cancel_marked(ws: Workspace, prefix: str) -> bool:
    return ws.store.exists(prefix + CANCEL)


# ---- metrics ------------------------------------------------------------------------------------

def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
        return float(value)  # non-finite values are logged as strings
    return None


def primary_values(event: dict[str, Any], name: str) -> list[float]:
    """The primary metric values one logged event carries (scalars and lists; rows are not a metric series)."""
    if event.get("name") != name or event.get("child"):  # a script's child run logs its own metrics
        return []
    kind, value = event.get("kind"), event.get("value")
    raw = value if kind == "list" and isinstance(value, list) else [value] if kind == "scalar" else []
    return [v for v in (_number(x) for x in raw) if v is not None]


def best_value(series: Iterable[float], goal: PrimaryMetricGoal | str) -> float | None:
    """The best finite value of a series (max when maximizing), or None."""
    finite = [v for v in series if math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if coerce_goal(goal) is PrimaryMetricGoal.MAXIMIZE else min(finite)


def reaches(value: float | None, threshold: float | None, goal: PrimaryMetricGoal | str) -> bool:
    if value is None or threshold is None:
        return False
    return value >= threshold if coerce_goal(goal) is PrimaryMetricGoal.MAXIMIZE else value <= threshold


# ---- children -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ChildInfo:
    """One child run as the sweep sees it."""

    run_id: str
    index: int
    params: dict[str, Any]
    status: RunStatus
    series: tuple[float, ...] = ()  # primary metric values logged so far, in order
    stopped: dict[str, Any] | None = None  # stopped.json: why the sweep stopped it
    record: RunRecord | None = None  # None: submission was interrupted before run.json was written

    @property
    def final(self) -> bool:
        return self.status.is_final


def started_at(record: RunRecord | None) -> float | None:
    if record is None:
        return None
    stamps = record.timestamps
    return parse_iso(stamps.get(RunStatus.RUNNING.value) or stamps.get(RunStatus.PREPARING.value))


def ended_at(record: RunRecord | None) -> float | None:
    if record is None:
        return None
    for status in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED):
        if status.value in record.timestamps:
            return parse_iso(record.timestamps[status.value])
    return None


def duration_seconds(record: RunRecord | None) -> float | None:
    start, end = started_at(record), ended_at(record)
    return None if start is None or end is None else round(max(end - start, 0.0), 3)


class SweepReader:
    """Reads a sweep's intents and children. With ``cache`` (the driver), what cannot change any more
    (intents, child specs, the metrics of finished children) is read once, and live metric streams are
    read incrementally."""

    def __init__(self, ws: Workspace, parent_id: str, prefix: str, metric: str) -> None:
        self.ws = ws
        self.parent_id = parent_id
        self.prefix = prefix
        self.metric = metric
        self._intents: dict[int, dict[str, Any]] = {}
        self._specs: dict[str, tuple[int, dict[str, Any]]] = {}
        self._final_series: dict[str, tuple[float, ...]] = {}
        self._live: dict[str, tuple[int, str, list[float]]] = {}
        self._stopped: dict[str, dict[str, Any] | None] = {}
        self.known_children: dict[int, str] = {}  # index -> child id this process submitted

    # -- intents ----------------------------------------------------------------------------------
    def intents(self) -> dict[int, dict[str, Any]]:
        for info in self.ws.store.list(self.prefix + INTENTS_DIR):
            name = info.key.rsplit("/", 1)[-1]
            try:
                index = int(name.removesuffix(".json"))
            except ValueError:
                continue
            if index not in self._intents:
                intent = load(Intent, self.ws.store.get_json(info.key), what=f"sweep intent {info.key}")
                self._intents[index] = intent.params
        return dict(self._intents)

    def remember_intent(self, index: int, params: dict[str, Any]) -> None:
        self._intents[index] = params

    # -- children ---------------------------------------------------------------------------------
    def child_ids(self) -> list[str]:
        ids = set(self.ws.store.list_dirs(self.prefix + CHILDREN_DIR))
        ids |= set(self.known_children.values())  # in case a listing lags behind our own writes
        return sorted(ids)

    def _spec(self, child_id: str) -> tuple[int, dict[str, Any]] | None:
        if child_id not in self._specs:
            try:
                data = self.ws.store.get_json(child_prefix(self.prefix, child_id) + layout.RUN_SPEC)
            except NotFoundError:
                return None
            tags = data.get("tags", {}) if isinstance(data, dict) else {}
            try:
                index = int(tags["sweep_index"])
                params = json.loads(tags.get("hyperparameters", "{}"))
            except (KeyError, ValueError, TypeError) as e:
                raise PayloadError(f"child {child_id} of sweep {self.parent_id} has bad sweep tags: {e}") from e
            self._specs[child_id] = (index, params if isinstance(params, dict) else {})
        return self._specs[child_id]

    def _records(self, ids: Sequence[str]) -> dict[str, RunRecord | None]:
        pipe = self.ws.redis.pipeline(transaction=False)
        for child_id in ids:
            pipe.hget(layout.rk_run(child_id), "record")
        out: dict[str, RunRecord | None] = {}
        for child_id, raw in zip(ids, pipe.execute(), strict=True):
            if raw:
                out[child_id] = RunRecord.from_dict(json.loads(raw))
                continue
            try:
                out[child_id] = RunRecord.from_dict(
                    self.ws.store.get_json(child_prefix(self.prefix, child_id) + layout.RUN_RECORD))
            except NotFoundError:
                out[child_id] = None
        return out

    def _series(self, child_id: str, record: RunRecord | None) -> tuple[float, ...]:
        if child_id in self._final_series:
            return self._final_series[child_id]
        if record is None:
            return ()
        if record.status.is_final:
            events = metrics.read(self.ws.redis, self.ws.store, child_id, record.files_prefix, final=True)
            series = tuple(v for e in events for v in primary_values(e, self.metric))
            self._final_series[child_id] = series
            self._live.pop(child_id, None)
            return series
        attempt, last, values = self._live.get(child_id, (record.attempt, "-", []))
        if attempt != record.attempt:  # a retried attempt starts its metrics afresh
            last, values = "-", []
        entries: Any = self.ws.redis.xrange(layout.rk_run_metrics(child_id), min="-" if last == "-" else f"({last}")
        values = list(values)
        for entry_id, fields in entries or []:
            last = str(entry_id)
            try:
                values.extend(primary_values(json.loads((fields or {}).get("e", "{}")), self.metric))
            except ValueError:
                continue
        self._live[child_id] = (record.attempt, last, values)
        return tuple(values)

    def _stopped_info(self, child_id: str, status: RunStatus) -> dict[str, Any] | None:
        if status is not RunStatus.CANCELED and status.is_final:
            return None  # it finished on its own: a stop decision (if any) came too late to matter
        if child_id not in self._stopped:
            try:
                data = self.ws.store.get_json(child_prefix(self.prefix, child_id) + STOPPED)
                self._stopped[child_id] = data if isinstance(data, dict) else None
            except NotFoundError:
                self._stopped[child_id] = None
        return self._stopped[child_id]

    def mark_stopped(self, child_id: str, info: dict[str, Any]) -> None:
        self._stopped[child_id] = info

    def children(self, *, with_metrics: bool = True) -> list[ChildInfo]:
        """Every child, ordered by index (then id)."""
        ids = self.child_ids()
        specs = {i: self._spec(i) for i in ids}
        ids = [i for i in ids if specs[i] is not None]
        records = self._records(ids)
        out = []
        for child_id in ids:
            index, params = specs[child_id]  # type: ignore[misc]
            record = records[child_id]
            status = record.status if record is not None else RunStatus.QUEUED
            series = self._series(child_id, record) if with_metrics else ()
            out.append(ChildInfo(run_id=child_id, index=index, params=params, status=status, series=series,
                                 stopped=self._stopped_info(child_id, status), record=record))
        out.sort(key=lambda c: (c.index, c.run_id))
        return out


# ---- results ------------------------------------------------------------------------------------

def _note(child: ChildInfo, metric: str, best: float | None) -> str:
    if child.status is RunStatus.FAILED:
        err = child.record.error if child.record is not None else None
        return f"failed: {err.message}" if err else "failed"
    if child.status is RunStatus.CANCELED:
        if child.stopped:
            return f"stopped by {child.stopped.get('by', '?')}"
        return "canceled"
    if not child.final:
        return child.status.value.lower()
    if best is None:
        return f"never reported {metric!r}"
    return ""


def best_first(goal: PrimaryMetricGoal | str) -> Callable[[dict[str, Any]], tuple[float, int]]:
    """The sort key of :func:`child_rows` rows that reported the metric: the best value first, then the lowest index."""
    sign = -1.0 if coerce_goal(goal) is PrimaryMetricGoal.MAXIMIZE else 1.0
    return lambda row: (sign * row["best_primary_metric"], row["index"])


def child_rows(children: Sequence[ChildInfo], goal: PrimaryMetricGoal | str, metric: str) -> list[dict[str, Any]]:
    """Children best first. Only children that Completed and reported the primary metric are ranked; the
    others (failed, stopped or canceled, still running, never reported it) follow in index order, with
    ``ranked`` False and a ``note`` saying why."""
    goal = coerce_goal(goal)
    rows: list[dict[str, Any]] = []
    for c in children:
        best = best_value(c.series, goal)
        rows.append({
            "run_id": c.run_id, "index": c.index, "hyperparameters": dict(c.params), "best_primary_metric": best,
            "last_primary_metric": c.series[-1] if c.series else None, "intervals": len(c.series),
            "status": c.status.value, "ranked": c.status is RunStatus.COMPLETED and best is not None,
            "arguments": list(c.record.arguments) if c.record is not None else [],
            "duration_seconds": duration_seconds(c.record),
            "stopped_by": c.stopped if c.status is RunStatus.CANCELED else None,
            "error": c.record.error.message if c.record is not None and c.record.error else None,
        })
        rows[-1]["note"] = "" if rows[-1]["ranked"] else _note(c, metric, best)
    ranked = sorted((r for r in rows if r["ranked"]), key=best_first(goal))
    rest = [r for r in rows if not r["ranked"]]
    for rank, row in enumerate(ranked, 1):
        row["rank"] = rank
    for row in rest:
        row["rank"] = None
    return ranked + rest


def build_summary(spec: SweepSpec, parent: RunRecord, children: Sequence[ChildInfo], *,
                  end_reason: str | None = None) -> dict[str, Any]:
    rows = child_rows(children, spec.goal, spec.primary_metric_name)
    counts: dict[str, int] = {s.value: 0 for s in RunStatus}
    for c in children:
        counts[c.status.value] += 1
    best = rows[0] if rows and rows[0]["ranked"] else None
    return {
        "parent_id": parent.run_id, "experiment": parent.experiment, "status": parent.status.value,
        "end_reason": end_reason,
        "primary_metric": {"name": spec.primary_metric_name, "goal": spec.goal.value},
        "sampling": spec.sampling.to_dict(), "policy": spec.policy.to_dict(),
        "limits": {"max_total_runs": spec.max_total_runs, "max_concurrent_runs": spec.max_concurrent_runs,
                   "max_duration_minutes": spec.max_duration_minutes, "goal_threshold": spec.goal_threshold},
        "started": parent.timestamps.get(RunStatus.RUNNING.value),
        "ended": next((parent.timestamps[s.value] for s in (RunStatus.COMPLETED, RunStatus.FAILED,
                                                             RunStatus.CANCELED) if s.value in parent.timestamps),
                      None),
        "counts": {"children": len(children), **{k: v for k, v in counts.items() if v},
                   "stopped_early": sum(1 for c in children if c.status is RunStatus.CANCELED and c.stopped)},
        "best": None if best is None else {"run_id": best["run_id"], "value": best["best_primary_metric"],
                                           "hyperparameters": best["hyperparameters"]},
        "children": rows,
    }
