"""The controller: scales every pool, re-queues runs whose node was lost, and recovers after restarts.

Each tick it *observes* (pools from the object store; node heartbeats, run states and leases from Redis;
node processes/pods from the provider), *decides* with pure functions (:func:`cluster.autoscale.decide`,
:func:`node_lost_decision`), then *acts* through a small provider interface. One controller leads at a
time (a Redis lease); a restarted controller picks up from Redis and the object store.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cluster import layout, luascript
from cluster.autoscale import NodeState, NodeView, PoolObservation, PoolSpec, ScalingDecision, decide
from cluster.compute import CONTROLLER_LEADER, load_specs, rk_pool_events, rk_pool_status
from cluster.errors import ClusterError, NotFoundError
from cluster.nodes import NODE_LOST_SECONDS, node_state
from cluster.nodes import heartbeats as read_heartbeats
from cluster.providers.base import Provider
from cluster.records import RunError, RunRecord, RunStatus, parse_iso
from cluster.sweep.driver import SweepDriver
from cluster.workspace import Workspace

if TYPE_CHECKING:
    from cluster.telemetry import Telemetry

log = logging.getLogger(__name__)

#: a final record in Redis whose run.json is still not final this long after is copied there by the controller
FINAL_RECORD_GRACE_SECONDS = 300.0
LIVE = {RunStatus.PREPARING.value, RunStatus.RUNNING.value, RunStatus.FINALIZING.value}


@dataclass(frozen=True)
class ControllerConfig:
    tick_seconds: float = 0.5
    min_tick_gap: float = 0.1  # woken by submits: never more often than this
    node_lost_seconds: float = NODE_LOST_SECONDS
    max_infra_attempts: int = 3
    start_timeout_seconds: float = 90.0
    leader_ttl_ms: int = 5000
    leader_key: str = CONTROLLER_LEADER  # one per cluster (tests use their own)
    prune_index_seconds: float = 5.0  # how often finished runs leave the live index
    # False: start and drain no node (an external scaler such as KEDA does it); node-loss supervision,
    # pool deletion and sweeps go on. ``manual_pools`` turns scaling off for those pools only.
    autoscale: bool = True
    manual_pools: frozenset[str] = frozenset()
    # a Queued run with no lease and no message in the broker, seen so twice this far apart, is queued again
    stranded_check_seconds: float = 15.0


# take the leader key if free, or extend it if it is ours; 1 = we lead
_LEAD = luascript.read("cluster", "lead.lua")


# ---- pure decisions -----------------------------------------------------------------------------

def node_lost_decision(record: RunRecord, *, max_infra_attempts: int, lost_after: float,
                       now: float) -> RunRecord:
    """The record after its node was lost: back to Queued (another attempt), or Failed once the
    infrastructure attempts are used up. The user's own failures never count here."""
    history = list(record.attempts)
    node = record.node or "?"
    if history:
        history[-1] = {**history[-1], "ended": now, "outcome": "node-lost"}
    lost = sum(1 for a in history if a.get("outcome") == "node-lost")
    if lost >= max_infra_attempts:
        error = RunError(kind="node-lost", message=f"node {node} stopped heartbeating (>{lost_after:g}s) during "
                         f"attempt {record.attempt}; gave up after {lost} infrastructure attempt(s)")
        return record.with_status(RunStatus.FAILED, at=now, error=error, attempts=tuple(history))
    return replace(record.with_status(RunStatus.QUEUED, at=now), node=None, attempts=tuple(history))


def lost_nodes(heartbeats: dict[str, dict[str, str]], pool: str, *, managed: set[str], known: set[str],
               now: float, lost_after: float) -> dict[str, str]:
    """Which of the pool's nodes are lost, and how (pure; the controller acts on it):

    * ``gone``: the provider started it and no longer reports it (its process or pod ended) -- forget it;
    * ``hung``: the provider still reports it but it stopped heartbeating -- kill it, then forget it;
    * ``silent``: a node the provider does not manage (a static node) stopped heartbeating -- its runs are
      re-queued, it is kept in view (it may come back) until it has been silent for long.
    """
    out: dict[str, str] = {}
    for name, h in heartbeats.items():
        if h.get("pool") != pool:
            continue
        lost = node_state(h, now, lost_after) is NodeState.LOST
        if name in known and name not in managed:
            out[name] = "gone"
        elif lost:
            out[name] = "hung" if name in managed else "silent"
    return out



# ---- the controller -----------------------------------------------------------------------------

@dataclass
class Controller:
    ws: Workspace
    provider: Provider
    config: ControllerConfig = field(default_factory=ControllerConfig)
    ident: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}")
    _idle_since: dict[str, float] = field(default_factory=dict)
    _started: dict[str, float] = field(default_factory=dict)
    _known: set[str] = field(default_factory=set)  # managed nodes the provider has reported
    _joined: set[str] = field(default_factory=set)  # managed nodes seen heartbeating
    _lost: dict[str, float] = field(default_factory=dict)  # node -> when it was declared lost
    _last_tick: float = 0.0  # time.monotonic() of the last tick's start
    _stranded_checked: float = 0.0
    _stranded: set[str] = field(default_factory=set)  # Queued runs with no lease and no message at the last check
    _leading: threading.Event = field(default_factory=threading.Event)  # set while this controller holds the lease
    _pruned_at: float = float("-inf")  # when finished runs last left the live index
    telemetry: Telemetry | None = None  # metrics (cluster/telemetry.py), told about each tick and node loss
    sweeps: SweepDriver = field(default_factory=SweepDriver)  # what the sweep driver remembers between ticks

    @property
    def r(self) -> Any:
        return self.ws.redis

    def run_forever(self, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        threading.Thread(target=self._keep_leading, args=(stop,), name="leader-lease", daemon=True).start()
        while not stop.is_set():
            started, led, ok = time.monotonic(), False, False
            try:
                if self._lead():
                    self._last_tick = time.monotonic()
                    led = True
                    self.tick(time.time())
                    ok = True
            except ClusterError as e:  # a server blip: report and retry next tick
                log.warning("controller: %s", e.message)
            except Exception as e:  # never die on one bad tick
                log.exception("controller: unexpected %s: %s", type(e).__name__, e)
            if self.telemetry is not None:
                if led:
                    self.telemetry.after_tick(time.monotonic() - started, ok=ok)
                else:
                    self.telemetry.standby()
            self._sleep(stop)
        if self.r.get(self.config.leader_key) == self.ident:
            self.r.delete(self.config.leader_key)

    def _sleep(self, stop: threading.Event) -> None:
        """Wait for the next tick, or less: a submit pushes to the wake list, so a queued run reaches a cold pool's
        scaling decision at once instead of up to a tick later."""
        try:
            if self.r.blpop([layout.RK_CONTROLLER_WAKE], timeout=self.config.tick_seconds):
                self.r.delete(layout.RK_CONTROLLER_WAKE)  # one tick serves every submit so far
                # a burst of submits: at most one tick per min_tick_gap
                stop.wait(max(0.0, self._last_tick + self.config.min_tick_gap - time.monotonic()))
        except Exception:  # Redis down: the next tick reports it
            stop.wait(self.config.tick_seconds)

    def _lead(self) -> bool:
        """Take or keep the leadership, atomically (one Lua call): two controllers never both lead."""
        leading = bool(self.r.eval(_LEAD, 1, self.config.leader_key, self.ident, self.config.leader_ttl_ms))
        if leading:
            self._leading.set()
        else:
            self._leading.clear()
        return leading

    def _keep_leading(self, stop: threading.Event) -> None:
        """Renew the leader lease every third of its period, however long a tick takes (a recovery after a
        Redis wipe, a slow object store): the lease never lapses under a live leader."""
        while not stop.wait(self.config.leader_ttl_ms / 3000):
            if not self._leading.is_set():
                continue
            try:
                self._lead()
            except Exception:  # Redis down: the lease lapses, and the next tick's _lead() finds out
                self._leading.clear()

    def autoscales(self, pool: str) -> bool:
        """Does this controller start and drain the pool's nodes? (No: an external scaler does.)"""
        return self.config.autoscale and pool not in self.config.manual_pools

    # -- one tick ---------------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        if not self.r.exists(layout.RK_EPOCH):  # absent after a Redis wipe
            self.recover(now)
        specs = load_specs(self.ws)
        heartbeats = read_heartbeats(self.r, forget_gone=True)
        for rec in specs.values():
            spec = PoolSpec.from_dict(rec["spec"])
            obs = self._observe(spec, heartbeats, now)  # also detects lost nodes
            self._supervise_runs(spec.name, now)
            if rec.get("state") == "deleting":
                self._delete_pool(spec, heartbeats, now)
            else:
                self._scale(spec, obs, now)
        # runs of pools with no compute target (static nodes only) are supervised too
        for pool in {h.get("pool", "") for h in heartbeats.values()} - set(specs):
            if pool:
                self._supervise_runs(pool, now)
        self._forget_dead_static_nodes(heartbeats, now)
        self._prune_live_index(now)
        if now - self._stranded_checked >= self.config.stranded_check_seconds:
            pools = set(specs) | {h.get("pool", "") for h in heartbeats.values()}
            self._requeue_stranded(sorted(p for p in pools if p), now)
        self.sweeps.drive(self.ws, now)

    def _runs(self, pool: str) -> tuple[list[str], list[str]]:
        ids = sorted(self.r.smembers(layout.rk_active(pool)))
        pipe = self.r.pipeline(transaction=False)
        for run_id in ids:
            pipe.hget(layout.rk_run(run_id), "status")
        queued, live = [], []
        for run_id, status in zip(ids, pipe.execute(), strict=True):
            if status == RunStatus.QUEUED.value:
                queued.append(run_id)
            elif status in LIVE:
                live.append(run_id)
            else:
                self.r.srem(layout.rk_active(pool), run_id)
        return queued, live

    def _prune_live_index(self, now: float) -> None:
        """Drop runs that became final from the live index, once run.json says so (the record decides, not
        Redis); a run whose run.json is not final yet (its node still writing it) is looked at again later. If
        it stays behind Redis' final record for long (the node died between the two writes), the controller
        copies that record to run.json: Redis is written first, so it is the newer of the two."""
        if now - self._pruned_at < self.config.prune_index_seconds:
            return
        self._pruned_at = now
        runs = self.ws.runs
        done = []
        for run_id in runs.finished_run_ids():
            try:
                stored = runs.stored_record(run_id)
                if not stored.status.is_final:
                    live = runs.record(run_id)
                    ended = parse_iso(live.timestamps.get(live.status.value))
                    if not live.status.is_final or ended is None or now - ended < FINAL_RECORD_GRACE_SECONDS:
                        continue
                    runs.store_record(live)
                runs.unindex_live(run_id)
                done.append(run_id)
            except NotFoundError:
                done.append(run_id)  # deleted with its experiment, or never stored: nothing to index
            except ClusterError:
                pass  # a store blip: later
        runs.forget_finished(done)

    def _observe(self, spec: PoolSpec, heartbeats: dict[str, dict[str, str]], now: float) -> PoolObservation:
        cfg = self.config
        views: list[NodeView] = []
        managed = set(self.provider.list_nodes(spec))
        lost = lost_nodes(heartbeats, spec.name, managed=managed, known=self._known, now=now,
                          lost_after=cfg.node_lost_seconds)
        for name, h in heartbeats.items():
            if h.get("pool") != spec.name:
                continue
            state = node_state(h, now, cfg.node_lost_seconds)
            if state is NodeState.IDLE:
                self._idle_since.setdefault(name, now)
            else:
                self._idle_since.pop(name, None)
            how = lost.get(name)
            if how in ("gone", "hung"):
                if how == "hung":
                    self.provider.stop_node(spec, name, force=True)  # silent but still there: remove it
                managed.discard(name)
                self._known.discard(name)
                self._mark_lost(spec.name, name, now)
                self.r.delete(layout.rk_node(name))
                self.r.srem(layout.RK_NODES, name)
                continue
            if how == "silent":
                self._mark_lost(spec.name, name, now)
            views.append(NodeView(name=name, state=state, static=h.get("static") == "1" and name not in managed,
                                  idle_since=self._idle_since.get(name), started_at=float(h.get("started", 0) or 0)))
        self._known |= managed
        seen = {v.name for v in views}
        self._joined = (self._joined | {v.name for v in views}) & managed  # forget nodes whose process is gone
        for name in managed - seen:
            if name in self._joined:
                continue  # it heartbeated before: exiting after a drain (or its key was just wiped); not "starting"
            started = self._started.setdefault(name, now)  # asked for, not heartbeating yet
            if now - started > cfg.start_timeout_seconds:
                self.provider.stop_node(spec, name)
                self._event(spec.name, now, f"node {name} never joined within {cfg.start_timeout_seconds:g}s; removed")
                continue
            views.append(NodeView(name=name, state=NodeState.STARTING, started_at=started))
        queued, live = self._runs(spec.name)
        return PoolObservation(pool=spec, nodes=tuple(views), queued=len(queued), running=len(live), now=now)

    def _mark_lost(self, pool: str, name: str, now: float) -> None:
        if name not in self._lost and self.telemetry is not None:
            self.telemetry.node_lost_in(pool)
        self._lost[name] = now

    def _scale(self, spec: PoolSpec, obs: PoolObservation, now: float) -> None:
        decision = decide(obs)
        if not self.autoscales(spec.name):  # published for `pools show` and the metrics, not acted on
            decision = replace(decision, start=0, drain=(), reason="autoscaling is off for this pool (an external "
                               f"scaler sizes it); by queued + running runs it would want {decision.desired}")
        if decision.start:
            for name in self.provider.start_nodes(spec, decision.start):
                self._started[name] = now
        for name in decision.drain:
            self.r.hset(layout.rk_node(name), "drain", "1")
        if decision.start or decision.drain:
            self._event(spec.name, now, decision.reason, decision)
        self._publish(spec, obs, decision, now)

    def _publish(self, spec: PoolSpec, obs: PoolObservation, decision: ScalingDecision, now: float) -> None:
        counts = {s.value: 0 for s in NodeState}
        for v in obs.nodes:
            counts[v.state.value] += 1
        nodes = [{"name": v.name, "state": v.state.value, "static": v.static} for v in obs.nodes]
        status = {"name": spec.name, "nodes": counts, "nodeList": nodes, "queuedRuns": obs.queued,
                  "runningRuns": obs.running, "currentNodeCount": counts["idle"] + counts["busy"],
                  "targetNodeCount": decision.desired, "decision": decision.to_dict(), "updated": now}
        self.r.set(rk_pool_status(spec.name), json.dumps(status))

    def _event(self, pool: str, now: float, reason: str, decision: ScalingDecision | None = None) -> None:
        event = {"t": now, "reason": reason, **({"start": decision.start, "drain": list(decision.drain)}
                                                 if decision else {})}
        pipe = self.r.pipeline()
        pipe.lpush(rk_pool_events(pool), json.dumps(event))
        pipe.ltrim(rk_pool_events(pool), 0, 199)
        pipe.execute()

    # -- runs whose node was lost ---------------------------------------------------------------------
    def _supervise_runs(self, pool: str, now: float) -> None:
        _queued, live = self._runs(pool)
        for run_id in live:
            holder = self.r.get(layout.rk_run_lease(run_id))
            if holder and holder.rsplit("/", 1)[0] not in self._lost:
                continue  # held by a live attempt
            self.requeue_lost(run_id, now, holder or "")
        for name, since in list(self._lost.items()):
            if now - since > 300:
                del self._lost[name]

    def _requeue_stranded(self, pools: list[str], now: float) -> None:
        """Queue again every Queued run that has neither a lease nor a message in the broker, two checks in a
        row (a submit between seeding Redis and enqueueing is never mistaken for one)."""
        self._stranded_checked = now
        unacked = self.ws.broker.unacked_run_ids()
        stranded: set[str] = set()
        for pool in pools:
            queued, _live = self._runs(pool)
            if not queued:
                continue
            waiting = self.ws.broker.queued_run_ids(pool) | unacked
            pipe = self.r.pipeline(transaction=False)
            candidates = [run_id for run_id in queued if run_id not in waiting]
            for run_id in candidates:
                pipe.exists(layout.rk_run_lease(run_id))
            for run_id, leased in zip(candidates, pipe.execute(), strict=True):
                if leased:
                    continue
                if run_id in self._stranded:
                    self.ws.enqueue(run_id, pool)
                    self._event(pool, now, f"run {run_id} was Queued with no message in the broker: queued again")
                else:
                    stranded.add(run_id)
        self._stranded = stranded

    def requeue_lost(self, run_id: str, now: float, holder: str = "") -> None:
        runs = self.ws.runs
        stored = runs.stored_record(run_id)
        if stored.status.is_final:
            # run.json is the record: the attempt finished (Redis may have lost its final write). Never re-run it.
            runs.seed(stored)
            return
        record = runs.record(run_id)
        if record.status.value not in LIVE:
            return
        new = node_lost_decision(record, max_infra_attempts=self.config.max_infra_attempts,
                                 lost_after=self.config.node_lost_seconds, now=now)
        if new.status is RunStatus.QUEUED and runs.cancel_requested(run_id):
            new = new.with_status(RunStatus.CANCELED, at=now)  # the user asked: don't start it again
        if runs.requeue(new, expected_holder=holder):
            if new.status is RunStatus.QUEUED:
                self.ws.enqueue(run_id, new.pool)
            self._event(record.pool, now, f"run {run_id}: node {record.node} lost during attempt {record.attempt}"
                        f" -> {new.status.value}")

    # -- pool deletion ----------------------------------------------------------------------------
    def _delete_pool(self, spec: PoolSpec, heartbeats: dict[str, dict[str, str]], now: float) -> None:
        queued, live = self._runs(spec.name)
        for run_id in queued:
            self.ws.runs.cancel(run_id)
        mine = [n for n, h in heartbeats.items() if h.get("pool") == spec.name]
        for name in mine:
            self.r.hset(layout.rk_node(name), "drain", "1")
        remaining = self.provider.list_nodes(spec)
        if not remaining and not live and not [n for n in mine if heartbeats[n].get("static") == "1"]:
            self.ws.store.delete(layout.pool_key(spec.name))
            self.r.delete(rk_pool_status(spec.name), rk_pool_events(spec.name))

    def _forget_dead_static_nodes(self, heartbeats: dict[str, dict[str, str]], now: float) -> None:
        for name, h in heartbeats.items():
            if now - float(h.get("heartbeat", 0) or 0) > 6 * self.config.node_lost_seconds:
                self.r.delete(layout.rk_node(name))
                self.r.srem(layout.RK_NODES, name)

    # -- recovery after a Redis wipe ------------------------------------------------------------------
    def recover(self, now: float) -> int:
        """Re-seed and re-queue every non-final run found in the object store but unknown to Redis. Reads the
        live index (runs not final when last seen), not every run ever stored; the first recovery on a store
        written before the index existed scans once and completes the index."""
        runs = self.ws.runs
        if self.ws.store.exists(layout.LIVE_INDEX_COMPLETE):
            candidates = runs.list_live_run_ids()
        else:
            candidates = [run_id for experiment in runs.list_experiments()
                          for run_id in runs.list_all_run_ids(experiment)]
        count = 0
        for run_id in candidates:
            if self.r.exists(layout.rk_run(run_id)):
                continue
            try:
                record = runs.stored_record(run_id)
            except ClusterError:
                continue
            if record.status.is_final:
                runs.unindex_live(run_id)
                continue
            if record.tags.get("kind") == "sweep":  # sweeps: cluster.sweep.driver
                continue
            if record.status.value in LIVE:  # its attempt died with Redis' state
                record = node_lost_decision(record, max_infra_attempts=self.config.max_infra_attempts,
                                            lost_after=self.config.node_lost_seconds, now=now)
            runs.seed(record)
            self.ws.store.put_json(record.prefix + layout.RUN_RECORD, record.to_dict())
            if record.status is RunStatus.QUEUED:
                runs.index_live(record)  # a run stored before the live index existed joins it
                self.ws.enqueue(run_id, record.pool)
                count += 1
            else:
                runs.unindex_live(run_id)  # gave up (node lost too often): final now
        if not self.ws.store.exists(layout.LIVE_INDEX_COMPLETE):
            self.ws.store.put_json(layout.LIVE_INDEX_COMPLETE, {"at": now})
        self.r.set(layout.RK_EPOCH, f"{now:.3f}")
        if count:
            log.info("controller: re-queued %d run(s) from the object store", count)
        return count

