"""The dashboard's run index: one summary row per run, so listing an experiment costs a few reads, not
several per run.

A finished run never changes again (its record, metrics and arguments are final), so its row is computed
once and kept -- in memory and in the object store, one JSON object per experiment::

    <cluster bucket>/index/ui/experiments/<experiment>.json    {"version": 1, "rows": {run_id: row}}

A request then costs one listing of the experiment's run folders (plus one per sweep still running), one
pipelined Redis read for the runs not final in the index, and the reads of the runs that finished since the
last request (their row is then added to the index and the index written back). Losing the object is
harmless: the rows are rebuilt from the runs' own records and metrics. Several dashboards may write it; the
last writer wins and a row missing from its copy is simply rebuilt later.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from cluster import layout, metrics
from cluster.errors import NotFoundError, PayloadError
from cluster.records import RunRecord, RunStatus, parse_iso

if TYPE_CHECKING:
    from cluster.workspace import Workspace

log = logging.getLogger("cluster.ui.index")

INDEX_VERSION = 1
READ_THREADS = 8
CHILDREN = layout.CHILDREN_DIR
index_key = layout.ui_index_key


def _final_json(raw: str) -> bool:
    try:
        return RunStatus(json.loads(raw).get("status")).is_final
    except (ValueError, AttributeError):
        return False


def scalar_metrics(values: dict[str, Any]) -> dict[str, Any]:
    """What a table column shows: a number or string as is, a series as its last value; rows are left out."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, list):
            scalars = [v for v in value if not isinstance(v, dict | list)]
            if scalars:
                out[name] = scalars[-1]
        elif not isinstance(value, dict):
            out[name] = value
    return out


def make_row(record: RunRecord, metric_values: dict[str, Any]) -> dict[str, Any]:
    """The summary of one run as the tables show it (JSON-ready)."""
    stamps = record.timestamps
    submitted = parse_iso(stamps.get(RunStatus.QUEUED.value))
    started = parse_iso(stamps.get(RunStatus.RUNNING.value) or stamps.get(RunStatus.PREPARING.value))
    ended = next((parse_iso(stamps[s.value]) for s in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED)
                  if s.value in stamps), None)
    last = max((t for t in (parse_iso(v) for v in stamps.values()) if t is not None), default=None)
    tags = dict(record.tags)
    kind = tags.get("kind", "run")
    return {
        "run_id": record.run_id, "experiment": record.experiment, "status": record.status.value,
        "final": record.status.is_final, "kind": kind if kind in ("sweep", "sweep-child") else "run",
        "parent_id": record.parent_id, "pool": record.pool, "node": record.node, "attempt": record.attempt,
        "tags": tags, "arguments": list(record.arguments),
        "submitted": submitted, "started": started, "ended": ended, "last_activity": last,
        "duration": round(ended - started, 3) if ended is not None and started is not None else None,
        "error": record.error.message if record.error else None,
        "metrics": scalar_metrics(metric_values),
    }


class RunIndex:
    """Summary rows of every run of an experiment, sweep children included (see the module docstring)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._final: dict[str, dict[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.reads = 0  # object-store reads of records and metrics made for rows (for tests and the benchmark)
        self._count = threading.Lock()

    # -- the stored index ---------------------------------------------------------------------------
    def _load(self, experiment: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            if experiment in self._final:
                return self._final[experiment]
        rows: dict[str, dict[str, Any]] = {}
        try:
            data = self.ws.store.get_json(index_key(experiment))
            if isinstance(data, dict) and data.get("version") == INDEX_VERSION and isinstance(data.get("rows"), dict):
                rows = {k: v for k, v in data["rows"].items() if isinstance(v, dict) and v.get("final")}
        except (NotFoundError, PayloadError):
            pass
        with self._lock:
            return self._final.setdefault(experiment, rows)

    def _save(self, experiment: str) -> None:
        with self._lock:
            rows = dict(self._final.get(experiment, {}))
        self.ws.store.put_json(index_key(experiment), {"version": INDEX_VERSION, "rows": rows})

    # -- listing ------------------------------------------------------------------------------------
    def rows(self, experiment: str) -> list[dict[str, Any]]:
        """Every run of the experiment (sweep children after their parent), as summary rows."""
        final = self._load(experiment)
        base = layout.experiment_runs_prefix(experiment)
        top = [(run_id, f"{base}{run_id}/") for run_id in self.ws.store.list_dirs(base)]
        live = self._live_rows([(i, p) for i, p in top if i not in final])
        ids: list[tuple[str, str]] = []
        for run_id, prefix in top:
            ids.append((run_id, prefix))
            row = final.get(run_id) or live.get(run_id)
            if row is None or row["kind"] != "sweep":
                continue
            kids = row.get("children")  # a final sweep whose children are all final: frozen in the index
            if kids is None:
                kids = self.ws.store.list_dirs(prefix + CHILDREN)
            ids += [(c, f"{prefix}{CHILDREN}{c}/") for c in kids]
        top_ids = {i for i, _p in top}
        live.update(self._live_rows([(i, p) for i, p in ids if i not in final and i not in top_ids]))
        newly_final = {i: r for i, r in live.items() if r["final"]}
        if newly_final:
            with self._lock:
                for run_id, r in newly_final.items():
                    if r["kind"] == "sweep":
                        kids = [i for i, p in ids if p.startswith(f"{base}{run_id}/{CHILDREN}")]
                        if not all((final.get(k) or live.get(k) or {}).get("final") for k in kids):
                            continue  # its children list is frozen only once every child is final too
                        r["children"] = sorted(kids)
                    final[run_id] = r
            try:
                self._save(experiment)
            except Exception as e:  # the index is a cache: a failed write costs a rebuild, nothing else
                log.warning("could not write the run index of %s: %s", experiment, e)
        return [final.get(i) or live[i] for i, _p in ids if i in final or i in live]

    def _live_rows(self, pending: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
        """Rows of runs not (yet) final in the index: one pipelined Redis read for their live records and
        live metrics; the object store only for runs Redis does not hold and for runs that just finished."""
        if not pending:
            return {}
        r = self.ws.redis
        pipe = r.pipeline(transaction=False)
        for run_id, _prefix in pending:
            pipe.hget(layout.rk_run(run_id), "record")
            pipe.xrange(layout.rk_run_metrics(run_id))
        replies = pipe.execute()

        def build(item: tuple[str, str, Any, Any]) -> tuple[str, dict[str, Any] | None]:
            run_id, prefix, raw, entries = item
            try:
                if raw:
                    record = RunRecord.from_dict(json.loads(raw))
                else:
                    self._read()
                    record = RunRecord.from_dict(self.ws.store.get_json(prefix + layout.RUN_RECORD))
            except (NotFoundError, PayloadError, ValueError):
                return run_id, None  # being created (spec written, record not yet) or damaged: not listed
            live = [json.loads(f["e"]) for _id, f in entries or [] if "e" in f]
            if record.status.is_final:  # the archive is authoritative; the live stream if there is none
                self._read()
                events = metrics.stored_events(self.ws.store, record.files_prefix) or live
            else:
                events = live
            return run_id, make_row(record, metrics.aggregate(events))

        items = [(run_id, prefix, replies[2 * n], replies[2 * n + 1]) for n, (run_id, prefix) in enumerate(pending)]
        slow = [i for i in items if not i[2] or _final_json(i[2])]
        slow_ids = {i[0] for i in slow}
        out = dict(build(i) for i in items if i[0] not in slow_ids)
        if slow:  # object-store reads: in parallel (the first listing of a big experiment reads every run once)
            with ThreadPoolExecutor(READ_THREADS) as pool:
                out.update(pool.map(build, slow))
        return {k: v for k, v in out.items() if v is not None}

    def _read(self) -> None:
        with self._count:
            self.reads += 1

    def experiments(self) -> list[str]:
        return sorted(self.ws.runs.list_experiments())

    def forget(self, experiments: Iterable[str] = ()) -> None:
        with self._lock:
            for e in experiments:
                self._final.pop(e, None)
