"""What the dashboard shows, read through the SDK (``Run``, ``HyperDriveRun``, ``Model``, ``ComputeTarget``):
plain, JSON-ready dicts shared by the pages and the JSON API."""

from __future__ import annotations

import json
import mimetypes
import threading
from typing import TYPE_CHECKING, Any

from cluster import layout
from cluster.autoscale import NodeState
from cluster.compute import load_specs, rk_pool_events, rk_pool_status
from cluster.errors import ClusterError, NotFoundError, UsageError
from cluster.experiment import Experiment
from cluster.model import MODEL_RECORD, Model, ModelRecord
from cluster.nodes import list_nodes
from cluster.records import KIND_SWEEP
from cluster.run import Run
from cluster.ui.index import RunIndex

if TYPE_CHECKING:
    from cluster.workspace import Workspace

SORTS = ("submitted", "started", "ended", "duration", "status", "run_id")
TEXT_PREVIEW_BYTES = 64 * 1024


class Views:
    """The dashboard's reads. One instance per app; the run index and model records are cached."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.index = RunIndex(ws)
        self._models: dict[tuple[str, int], dict[str, Any]] = {}
        self._sweeps: dict[str, tuple[str, bool]] = {}  # sweep id -> (primary metric, maximize): immutable
        self._lock = threading.Lock()

    # -- experiments and runs ---------------------------------------------------------------------
    def experiments(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for name in self.index.experiments():
            rows = self.index.rows(name)
            counts: dict[str, int] = {}
            for r in rows:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            last = max((r["last_activity"] or 0.0 for r in rows), default=0.0)
            out.append({"name": name, "runs": sum(1 for r in rows if not r["parent_id"]), "all_runs": len(rows),
                        "counts": counts, "last_activity": last or None})
        out.sort(key=lambda e: float(e["last_activity"] or 0.0), reverse=True)
        return out

    def runs(self, experiment: str | None = None, *, status: str | None = None, tag: str | None = None,
             sort: str = "submitted", order: str = "desc", limit: int = 50, offset: int = 0,
             grouped: bool = False) -> dict[str, Any]:
        """Runs filtered by status and tag (``key`` or ``key=value``), sorted by a field or ``metric:<name>``.
        Flat (every run, children included), or ``grouped``: top-level runs paginated, each sweep with its
        matching children under it."""
        if limit < 1 or limit > 1000 or offset < 0:
            raise UsageError("limit must be 1..1000 and offset >= 0")
        if order not in ("asc", "desc"):
            raise UsageError(f"order must be asc or desc, not {order!r}")
        if sort not in SORTS and not sort.startswith("metric:"):
            raise UsageError(f"cannot sort by {sort!r}", hint=f"use one of {', '.join(SORTS)} or metric:<name>")
        names = [layout.check_name("experiment", experiment)] if experiment else self.index.experiments()
        rows = self._with_sweep_best([r for name in names for r in self.index.rows(name)])
        metric_names = sorted({m for r in rows for m in r["metrics"]})
        matching = [r for r in rows if _matches(r, status, tag)]
        key = _sort_key(sort)
        present = [r for r in matching if key(r) is not None]
        missing = [r for r in matching if key(r) is None]  # no value for that column: always last
        present.sort(key=lambda r: (key(r), r["run_id"]), reverse=order == "desc")
        ordered = present + missing
        if not grouped:
            return {"total": len(ordered), "offset": offset, "limit": limit, "metrics": metric_names,
                    "runs": ordered[offset:offset + limit]}
        children: dict[str, list[dict[str, Any]]] = {}
        for r in ordered:
            if r["parent_id"]:
                children.setdefault(r["parent_id"], []).append(r)
        top_ids = {r["run_id"] for r in rows if not r["parent_id"]}
        top = [r for r in ordered if not r["parent_id"]]
        # a child matching the filter whose parent does not still shows, under a parent row
        shown = {r["run_id"] for r in top}
        for parent_id in children:
            if parent_id not in shown and parent_id in top_ids:
                top.append(next(r for r in rows if r["run_id"] == parent_id))
        page = [{**r, "children": children.get(r["run_id"], [])} for r in top[offset:offset + limit]]
        return {"total": len(top), "offset": offset, "limit": limit, "metrics": metric_names, "runs": page}

    def _with_sweep_best(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A sweep's row shows (and sorts by) its best completed child's value of the primary metric."""
        kids: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r["parent_id"]:
                kids.setdefault(r["parent_id"], []).append(r)
        out = []
        for r in rows:
            if r["kind"] == "sweep" and kids.get(r["run_id"]):
                metric, maximize = self._sweep_goal(r)
                values = [c["metrics"][metric] for c in kids[r["run_id"]] if c["status"] == "Completed"
                          and isinstance(c["metrics"].get(metric), int | float)
                          and not isinstance(c["metrics"][metric], bool)]
                if metric and values:
                    best = max(values) if maximize else min(values)
                    r = {**r, "metrics": {**r["metrics"], metric: best}, "best_of_children": metric}
            out.append(r)
        return out

    def _sweep_goal(self, row: dict[str, Any]) -> tuple[str, bool]:
        key = row["run_id"]
        with self._lock:
            cached = self._sweeps.get(key)
        if cached is None:
            from cluster.sweep import state

            try:
                spec = state.load_spec(self.ws, layout.run_prefix(row["experiment"], key))
                cached = (spec.primary_metric_name, spec.goal.value.lower().startswith("max"))
            except ClusterError:
                cached = ("", True)
            with self._lock:
                self._sweeps[key] = cached
        return cached

    def run(self, run_id: str) -> Run:
        record = self.ws.runs.record(run_id)
        return Run(Experiment(self.ws, record.experiment), run_id)

    def run_details(self, run_id: str) -> dict[str, Any]:
        run = self.run(run_id)
        details = run.get_details()
        final = self.ws.runs.status(run_id).is_final
        from cluster import metrics as metrics_mod

        key = layout.rk_run_metrics(run_id)
        # the stream position the page's live feed continues from: exactly after the events returned here
        if final:
            events = metrics_mod.read(self.ws.redis, self.ws.store, run_id, run.files_prefix(), final=True)
            last: Any = self.ws.redis.xrevrange(key, count=1)  # a final run's stream no longer grows
            cursor = str(last[0][0]) if last else "0-0"
        else:
            entries: Any = self.ws.redis.xrange(key)
            events = [json.loads(f["e"]) for _id, f in entries if "e" in f]
            cursor = str(entries[-1][0]) if entries else "0-0"
        details["final"] = final
        details["metrics"] = metrics_mod.aggregate(events)
        details["metric_events"] = events
        details["metrics_cursor"] = cursor
        details["is_sweep"] = details["tags"].get("kind") == KIND_SWEEP and not details["parent"]
        details["isolation"] = details.get("isolation") or _isolation(self.ws, run_id)
        return details

    def files(self, run_id: str) -> list[dict[str, Any]]:
        prefix = self.run(run_id).files_prefix()
        out = []
        for folder in (layout.LOGS_DIR, layout.OUTPUTS_DIR):
            for info in self.ws.store.list(f"{prefix}{folder}/"):
                name = info.key[len(prefix):]
                kind = file_kind(name)
                out.append({"name": name, "size": info.size, "kind": kind})
        return sorted(out, key=lambda f: f["name"])

    def file_key(self, run_id: str, path: str) -> str:
        rel = path.replace("\\", "/").lstrip("/")
        if any(p in ("..", "") for p in rel.split("/")) or rel.split("/")[0] not in (layout.LOGS_DIR,
                                                                                      layout.OUTPUTS_DIR):
            raise UsageError(f"bad file path {path!r}", hint="a run's files are under logs/ and outputs/")
        key = self.run(run_id).files_prefix() + rel
        if self.ws.store.stat(key) is None:
            raise NotFoundError(f"run {run_id} has no file {rel!r}")
        return key

    def run_models(self, run_id: str) -> list[dict[str, Any]]:
        return [m for m in self.models() if m["run_id"] == run_id]

    # -- sweeps -----------------------------------------------------------------------------------
    def sweep(self, run_id: str) -> dict[str, Any]:
        from cluster.sweep.run import HyperDriveRun

        hd = HyperDriveRun.from_id(self.ws, run_id)
        summary = hd.get_summary(live=True)
        spec = hd.spec
        counts = summary.get("counts", {})
        running = sum(counts.get(s, 0) for s in ("Queued", "Preparing", "Running", "Finalizing"))
        summary["progress"] = {"sampled": counts.get("children", 0), "running": running,
                               "completed": counts.get("Completed", 0), "failed": counts.get("Failed", 0),
                               "stopped": counts.get("stopped_early", 0), "canceled": counts.get("Canceled", 0),
                               "max_total_runs": spec.max_total_runs}
        summary["parameters"] = list(spec.sampling.space)
        summary["final"] = self.ws.runs.status(run_id).is_final
        return summary

    # -- models -----------------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        """Every model version (records are immutable, so each is read once)."""
        out = []
        prefix = layout.MODELS_PREFIX
        for info in self.ws.store.list(prefix):
            parts = info.key[len(prefix):].split("/")
            if len(parts) != 3 or parts[2] != MODEL_RECORD or not parts[1].isdigit():
                continue
            key = (parts[0], int(parts[1]))
            with self._lock:
                cached = self._models.get(key)
            if cached is None:
                cached = ModelRecord.from_dict(self.ws.store.get_json(info.key)).to_dict()
                with self._lock:
                    self._models[key] = cached
            out.append(cached)
        out.sort(key=lambda m: (m["name"], -m["version"]))
        return out

    def model_file_key(self, name: str, version: int, path: str) -> str:
        model = Model(self.ws, name, version)
        rel = path.lstrip("/")
        if rel not in model.files:
            raise NotFoundError(f"model {model.id} has no file {rel!r}")
        return layout.model_prefix(name, version) + layout.MODEL_FILES_DIR + rel

    # -- pools and nodes --------------------------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        return [{"name": n.name, "pool": n.pool, "state": n.state.value, "run": n.run,
                 "heartbeat_age": round(n.heartbeat_age, 1), "static": n.static,
                 "draining": n.state is NodeState.DRAINING} for n in list_nodes(self.ws)]

    def pools(self) -> list[dict[str, Any]]:
        specs = load_specs(self.ws)
        nodes = self.nodes()
        r = self.ws.redis
        pipe = r.pipeline(transaction=False)
        for name in specs:
            pipe.get(rk_pool_status(name))
            pipe.lrange(rk_pool_events(name), 0, 199)
        replies = pipe.execute()
        out = []
        for n, (name, rec) in enumerate(specs.items()):
            raw_status, raw_events = replies[2 * n], replies[2 * n + 1]
            status = json.loads(raw_status) if raw_status else None
            events = [json.loads(e) for e in raw_events or []]
            events.reverse()  # oldest first, for the chart
            out.append({"name": name, "spec": rec.get("spec", {}), "state": rec.get("state", "active"),
                        "status": status, "events": events, "managed": True,
                        "nodes": [v for v in nodes if v["pool"] == name]})
        for pool in sorted({v["pool"] for v in nodes} - set(specs)):  # nodes started by hand (`cluster worker`)
            out.append({"name": pool, "spec": None, "state": "static", "status": None, "events": [],
                        "managed": False, "nodes": [v for v in nodes if v["pool"] == pool]})
        return out


def _isolation(ws: Workspace, run_id: str) -> str | None:
    """The isolation the node recorded for the run, if this cluster's nodes record one."""
    raw = ws.redis.hget(layout.rk_run(run_id), "record")
    try:
        data = json.loads(raw) if raw else ws.store.get_json(ws.runs.prefix(run_id) + layout.RUN_RECORD)
    except (NotFoundError, ValueError):
        return None
    value = data.get("isolation") if isinstance(data, dict) else None
    return str(value) if value else None


def file_kind(name: str) -> str:
    mime, _ = mimetypes.guess_type(name)
    if mime and mime.startswith("image/"):
        return "image"
    if (mime and (mime.startswith("text/") or mime in ("application/json", "application/x-yaml"))) or \
            name.endswith((".log", ".txt", ".csv", ".md", ".yaml", ".yml", ".json", ".out", ".err")):
        return "text"
    return "binary"


def _matches(row: dict[str, Any], status: str | None, tag: str | None) -> bool:
    if status and row["status"].lower() not in {s.strip().lower() for s in status.split(",")}:
        return False
    if tag:
        key, sep, value = tag.partition("=")
        if key not in row["tags"] or (sep and row["tags"][key] != value):
            return False
    return True


def _sort_key(sort: str) -> Any:
    if sort.startswith("metric:"):
        name = sort[len("metric:"):]

        def metric(r: dict[str, Any]) -> Any:
            v = r["metrics"].get(name)
            if isinstance(v, bool) or v is None:
                return None
            return (0, float(v), "") if isinstance(v, int | float) else (1, 0.0, str(v))
        return metric
    return lambda r: r.get(sort)
