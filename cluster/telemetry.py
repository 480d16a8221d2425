"""Prometheus metrics, served by the controller on a port of its own (``metrics_port``).

Two kinds of numbers:

* **Gauges read at scrape time** (:class:`StateCollector`) from Redis and the object store: runs by status
  per pool, nodes by state and desired nodes per pool (what the controller last published), sweep children
  by status. A scrape always shows the current state, whichever process wrote it.
* **Counters and histograms updated from observed transitions**: every final status and every requeue after
  a node loss is appended to a capped Redis stream (:func:`cluster.runstate.note_transition`); the leading
  controller reads it after each tick (:meth:`Telemetry.after_tick`) and counts finished runs, attempt
  outcomes and phase durations. Node losses are reported by the controller itself, which detects them.

Label values are bounded: pool names, fixed status/phase/state/outcome words, and the ids of *running*
sweeps only (a finished sweep's series disappear). No run id is ever a label. Names and meanings are
listed in ``docs/operations.md``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import redis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cluster import layout
from cluster.autoscale import NodeState
from cluster.compute import CONTROLLER_LEADER, load_specs, rk_pool_status
from cluster.errors import ClusterError, ServiceError
from cluster.nodes import NODE_LOST_SECONDS, node_state
from cluster.nodes import heartbeats as node_heartbeats
from cluster.records import RunRecord, RunStatus, parse_iso
from cluster.runstate import rk_active
from cluster.workspace import Workspace

log = logging.getLogger("cluster.telemetry")

LIVE_STATUSES = ("queued", "preparing", "running", "finalizing")
FINAL_STATUSES = ("completed", "failed", "canceled")
OUTCOMES = ("completed", "failed", "canceled", "node-lost")
PHASES = ("queue_wait", "preparing", "running", "finalizing")
NODE_STATES = tuple(s.value for s in NodeState)
#: (phase, status that starts it, statuses that end it): a phase lasts from entering one status to the next.
_PHASE_BOUNDS = (
    ("queue_wait", RunStatus.QUEUED, (RunStatus.PREPARING,)),
    ("preparing", RunStatus.PREPARING, (RunStatus.RUNNING,)),
    ("running", RunStatus.RUNNING, (RunStatus.FINALIZING,)),
    ("finalizing", RunStatus.FINALIZING, (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELED)),
)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, float("inf"))
TICK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, float("inf"))


# ---- pure helpers -------------------------------------------------------------------------------

def phase_durations(timestamps: Mapping[str, str]) -> dict[str, float]:
    """Seconds spent in each phase, from a run record's timestamps (when it *first* entered each status).
    A phase the run never left (or never entered) is absent; so is one whose clock went backwards."""
    out: dict[str, float] = {}
    for phase, start, ends in _PHASE_BOUNDS:
        begin = parse_iso(timestamps.get(start.value))
        end = next((t for t in (parse_iso(timestamps.get(e.value)) for e in ends) if t is not None), None)
        if begin is not None and end is not None and end >= begin:
            out[phase] = end - begin
    return out


# ---- the metrics --------------------------------------------------------------------------------

class Telemetry:
    """The controller's metrics: a private registry with the counters/histograms it updates and the
    :class:`StateCollector` that reads gauges at scrape time.

    ``ident`` is the controller's leader identity (for ``cluster_controller_leader``); ``autoscales(pool)``
    says whether the controller scales that pool (for ``cluster_pool_autoscaled``)."""

    def __init__(self, ws: Workspace, *, ident: str = "", autoscales: Callable[[str], bool] = lambda _p: True,
                 registry: CollectorRegistry | None = None) -> None:
        disable_created_metrics()  # no *_created series: Prometheus needs none, and they double the output
        self.ws = ws
        self.ident = ident
        self.autoscales = autoscales
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.finished = Counter("cluster_runs_finished", "Runs that reached a final status", ["pool", "status"],
                                registry=reg)
        self.attempts = Counter("cluster_run_attempts", "Run attempts that ended, by outcome",
                                ["pool", "outcome"], registry=reg)
        self.node_lost = Counter("cluster_node_lost", "Nodes declared lost (silent or process/pod gone)",
                                 ["pool"], registry=reg)
        self.durations = Histogram("cluster_run_duration_seconds", "Time finished runs spent in each phase",
                                   ["pool", "phase"], buckets=DURATION_BUCKETS, registry=reg)
        self.tick_seconds = Histogram("cluster_controller_tick_duration_seconds",
                                      "Duration of the controller's ticks", buckets=TICK_BUCKETS, registry=reg)
        self.last_tick = Gauge("cluster_controller_last_tick_timestamp_seconds",
                               "Unix time the last successful tick ended", registry=reg)
        self.tick_errors = Counter("cluster_controller_tick_errors", "Ticks that ended with an error",
                                   registry=reg)
        self._pools: set[str] = set()
        self._lock = threading.Lock()
        self._cursor: str | None = None  # where counting goes on; None: from the stream's end, at the next tick
        with contextlib.suppress(redis.RedisError):
            self._cursor = self._stream_end()  # before the first tick, so that its transitions count
        reg.register(StateCollector(self))

    # -- counters from transitions ----------------------------------------------------------------
    def _stream_end(self) -> str:
        last: Any = self.ws.redis.xrevrange(layout.RK_RUN_EVENTS, count=1)
        return str(last[0][0]) if last else "0-0"

    def ensure_pool(self, pool: str) -> None:
        """Create a pool's series at zero, so a rate() over them works before the first event."""
        with self._lock:
            if pool in self._pools:
                return
            self._pools.add(pool)
        for status in FINAL_STATUSES:
            self.finished.labels(pool, status)
        for outcome in OUTCOMES:
            self.attempts.labels(pool, outcome)
        for phase in PHASES:
            self.durations.labels(pool, phase)
        self.node_lost.labels(pool)

    def consume(self) -> int:
        """Count the transitions appended since the last call; returns how many were read.

        Counting starts at the stream's end when the process starts (a restarted controller's counters start
        at zero, as Prometheus expects of a restarted process), and again when a standby process starts
        leading (it does not count again what the previous leader counted)."""
        if self._cursor is None:
            self._cursor = self._stream_end()
            return 0
        count = 0
        while True:
            reply: Any = self.ws.redis.xread({layout.RK_RUN_EVENTS: self._cursor}, count=500)
            if not reply:
                return count
            for _stream, entries in reply:
                for entry_id, fields in entries:
                    self._cursor = str(entry_id)
                    self.apply(fields or {})
                    count += 1

    def apply(self, fields: Mapping[str, str]) -> None:
        """One transition: an attempt's outcome and/or a final status with the run's phase durations."""
        pool = fields.get("pool") or "default"
        self.ensure_pool(pool)
        outcome = fields.get("outcome", "")
        if outcome in OUTCOMES:
            self.attempts.labels(pool, outcome).inc()
        status = (fields.get("status") or "").lower()
        if status in FINAL_STATUSES:
            self.finished.labels(pool, status).inc()
            try:
                stamps = json.loads(fields.get("timestamps") or "{}")
            except ValueError:
                stamps = {}
            if isinstance(stamps, dict):
                for phase, seconds in phase_durations(stamps).items():
                    self.durations.labels(pool, phase).observe(seconds)

    def standby(self) -> None:
        """Called for each tick this process does not lead: count again from the end when it leads."""
        self._cursor = None

    def node_lost_in(self, pool: str) -> None:
        self.ensure_pool(pool)
        self.node_lost.labels(pool).inc()

    # -- the controller's hooks -------------------------------------------------------------------
    def after_tick(self, seconds: float, *, ok: bool, now: float | None = None) -> None:
        """Called by the leading controller after each tick."""
        self.tick_seconds.observe(seconds)
        if not ok:
            self.tick_errors.inc()
            return
        self.last_tick.set(time.time() if now is None else now)
        try:
            self.consume()
        except redis.RedisError as e:  # counted next tick: the cursor only moves past applied entries
            log.warning("cannot read run transitions: %s", e)

    def serve(self, port: int, host: str = "127.0.0.1") -> Callable[[], None]:
        """Serve ``/metrics`` on ``host:port`` in a background thread; returns a function that stops it."""
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            raise ServiceError(f"cannot serve metrics on {host}:{port}: {e}",
                               hint="choose another port with --metrics-port (or metrics_port in the config)") from e

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(5)

        return stop


# ---- gauges read at scrape time -----------------------------------------------------------------

class StateCollector(Collector):
    """Reads the cluster's current state at each scrape (a few Redis round trips and one object-store
    listing of the pools); never raises: a failed read yields ``cluster_metrics_state_ok 0``."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.t = telemetry
        self._final_children: dict[str, dict[str, str]] = {}  # sweep -> child -> final status (immutable)
        self._lock = threading.Lock()  # scrapes may come concurrently (a threading HTTP server)

    def describe(self) -> Iterable[Metric]:
        return []  # collected on demand only (no Redis call at registration)

    def collect(self) -> Iterator[Metric]:
        ok = GaugeMetricFamily("cluster_metrics_state_ok", "1 if the last scrape read Redis and the object store")
        try:
            with self._lock:
                families = self._families(time.time())
        except Exception as e:  # a scrape never fails: it says the state could not be read
            log.warning("metrics: cannot read the cluster's state: %s: %s", type(e).__name__, e)
            ok.add_metric([], 0)
            yield ok
            return
        ok.add_metric([], 1)
        yield ok
        yield from families

    def _families(self, now: float) -> list[Metric]:
        ws, r = self.t.ws, self.t.ws.redis
        specs = load_specs(ws)
        heartbeats = node_heartbeats(r)
        pools = set(specs) | {h.get("pool", "") for h in heartbeats.values()}
        pools |= {str(k).split(":")[2] for k in r.scan_iter(match=rk_active("*"), count=500)}
        pools.discard("")
        runs = GaugeMetricFamily("cluster_runs", "Runs not yet final, by status", labels=["pool", "status"])
        nodes = GaugeMetricFamily("cluster_pool_nodes", "Nodes by state", labels=["pool", "state"])
        desired = GaugeMetricFamily("cluster_pool_desired_nodes", "The controller's desired node count",
                                    labels=["pool"])
        bounds = GaugeMetricFamily("cluster_pool_node_bounds", "A pool's min_nodes and max_nodes",
                                   labels=["pool", "bound"])
        scaled = GaugeMetricFamily("cluster_pool_autoscaled", "1 if the controller scales this pool (0: off, "
                                   "e.g. KEDA scales it)", labels=["pool"])
        for pool in sorted(pools):
            self.t.ensure_pool(pool)
            counts = _run_counts(r, pool)
            for status in LIVE_STATUSES:
                runs.add_metric([pool, status], counts.get(status, 0))
            published = _published_status(r, pool) if pool in specs else None
            states = _node_counts(published, heartbeats, pool, now)
            for state in NODE_STATES:
                nodes.add_metric([pool, state], states.get(state, 0))
            if pool in specs:
                spec = specs[pool].get("spec", {})
                for bound in ("min_nodes", "max_nodes"):
                    if isinstance(spec.get(bound), int):
                        bounds.add_metric([pool, bound], spec[bound])
                if published is not None:
                    desired.add_metric([pool], float(published.get("targetNodeCount", 0) or 0))
                scaled.add_metric([pool], 1 if self.t.autoscales(pool) else 0)
        leader = GaugeMetricFamily("cluster_controller_leader", "1 if this controller process leads")
        leader.add_metric([], 1 if self.t.ident and r.get(CONTROLLER_LEADER) == self.t.ident else 0)
        return [runs, nodes, desired, bounds, scaled, self._sweeps(), leader]

    def _sweeps(self) -> Metric:
        from cluster.sweep import state as sweep_state

        ws, r = self.t.ws, self.t.ws.redis
        family = GaugeMetricFamily("cluster_sweep_children", "Children of running sweeps, by status",
                                   labels=["sweep", "status"])
        running = set()
        for parent in sorted(str(p) for p in r.smembers(sweep_state.RK_ACTIVE)):
            status, raw_prefix = r.hmget(layout.rk_run(parent), "status", "prefix")
            if not raw_prefix or status != RunStatus.RUNNING.value:
                continue
            prefix = str(raw_prefix)
            running.add(parent)
            finals = self._final_children.setdefault(parent, {})
            ids = ws.store.list_dirs(prefix + sweep_state.CHILDREN_DIR)
            live = [i for i in ids if i not in finals]
            pipe = r.pipeline(transaction=False)
            for child in live:
                pipe.hget(layout.rk_run(child), "status")
            counts = {s.value: 0 for s in RunStatus}
            for child, st in zip(live, pipe.execute(), strict=True):
                if not st:  # Redis lost it: the object store has the record
                    try:
                        st = RunRecord.from_dict(ws.store.get_json(
                            sweep_state.child_prefix(prefix, child) + layout.RUN_RECORD)).status.value
                    except ClusterError:
                        st = RunStatus.QUEUED.value
                if RunStatus(st).is_final:
                    finals[child] = st
                else:
                    counts[st] += 1
            for st in finals.values():
                counts[st] += 1
            for st, n in counts.items():
                family.add_metric([parent, st.lower()], n)
        for gone in set(self._final_children) - running:
            del self._final_children[gone]
        return family


def _run_counts(r: Any, pool: str) -> dict[str, int]:
    ids = sorted(r.smembers(rk_active(pool)))
    pipe = r.pipeline(transaction=False)
    for run_id in ids:
        pipe.hget(layout.rk_run(run_id), "status")
    counts: dict[str, int] = {}
    for st in pipe.execute():
        if st:
            counts[str(st).lower()] = counts.get(str(st).lower(), 0) + 1
    return counts


def _published_status(r: Any, pool: str) -> dict[str, Any] | None:
    raw = r.get(rk_pool_status(pool))
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _node_counts(published: dict[str, Any] | None, heartbeats: Mapping[str, Mapping[str, str]], pool: str,
                 now: float) -> dict[str, int]:
    """Nodes by state: what the controller published for a compute target (it alone knows which nodes are
    starting); for a pool of static nodes only, from their heartbeats."""
    if published is not None and isinstance(published.get("nodes"), dict):
        return {str(k): int(v) for k, v in published["nodes"].items()}
    lost_after = NODE_LOST_SECONDS
    counts: dict[str, int] = {}
    for h in heartbeats.values():
        if h.get("pool") == pool:
            state = node_state(dict(h), now, lost_after).value
            counts[state] = counts.get(state, 0) + 1
    return counts


def check(url: str, timeout: float = 3.0) -> tuple[bool, str]:
    """Fetch a metrics URL: (healthy, detail) for `cluster status`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            text = resp.read().decode("utf-8", "replace")
    except OSError as e:
        return False, f"no answer: {e}"
    if "cluster_controller_last_tick_timestamp_seconds" not in text:
        return False, "answers, but without the cluster's metrics"
    if "cluster_metrics_state_ok 1.0" not in text:
        return False, "serving, but cannot read the cluster's state (see the controller log)"
    series = sum(1 for line in text.splitlines() if line.startswith("cluster_"))
    return True, f"{series} series"
