"""The sweep driver: the leading controller advances every active sweep by one idempotent step per tick.

A step *observes* (the parent record, the intents, the children with their statuses and primary-metric
series), *decides* with a pure function (:func:`plan_step`: samplers and policies are pure too), then
*acts*: cancels the children a policy stopped (writing ``stopped.json`` first), writes the intents of new
children, submits them, keeps ``summary.json`` current, and ends the sweep.

No duplicate child, whatever the moment the controller dies: a child's parameters are written as
``intents/<index>.json`` *before* it is submitted, and the child carries its index as a tag. A step
submits exactly the intents that have no child yet (after a crash between the two writes: the same
parameters, once) and samples new indices only after the last intent, so an index never gets a second
child. A child whose submission was cut short (created but not queued, or its record half-written) is
completed and re-queued when a controller first takes the sweep over; a second delivery of a run id is
harmless (the run's lease admits one attempt at a time). One controller drives a sweep at a time: a
per-sweep lock in Redis, taken over at once from a dead process on the same host.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psutil

from cluster import layout, luascript
from cluster.errors import ClusterError, NotFoundError, PayloadError, UsageError
from cluster.experiment import Experiment, submit_run
from cluster.records import RunError, RunRecord, RunSpec, RunStatus, now_iso
from cluster.sweep import state
from cluster.sweep.policy import NoTerminationPolicy, StopDecision
from cluster.sweep.sampling import Trial
from cluster.sweep.sweepspec import SweepSpec, argument_name

if TYPE_CHECKING:
    from cluster.workspace import Workspace

log = logging.getLogger(__name__)

LOCK_MS = 15_000
SUMMARY_EVERY = 5.0  # seconds between summary rewrites for new metric values alone

# ---- pure decision ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepPlan:
    """What one step does. ``submit`` lists intent indices (older pending ones, then ``new_intents``)."""

    stop: tuple[StopDecision, ...] = ()
    cancel: tuple[str, ...] = ()  # children to cancel because the sweep is ending
    ending: str | None = None  # why the sweep stops sampling early: canceled | max_duration | goal_threshold
    new_intents: tuple[tuple[int, dict[str, Any]], ...] = ()
    submit: tuple[int, ...] = ()
    finish: RunStatus | None = None
    reason: str = ""


def child_value(child: state.ChildInfo, spec: SweepSpec) -> float | None:
    """The value a finished child tells the sampler: its best primary metric (None if it failed)."""
    if not child.final or child.status is RunStatus.FAILED:
        return None
    return state.best_value(child.series, spec.goal)


def history(intents: Mapping[int, dict[str, Any]], by_index: Mapping[int, state.ChildInfo],
            spec: SweepSpec) -> list[Trial]:
    return [Trial(params=dict(intents[i]), value=child_value(by_index[i], spec) if i in by_index else None)
            for i in sorted(intents)]


def plan_step(spec: SweepSpec, children: Sequence[state.ChildInfo], intents: Mapping[int, dict[str, Any]], *,
              cancel_requested: bool, now: float) -> StepPlan:
    """The next step of a sweep, as a pure function of what was observed (its sampler and policy are the spec's)."""
    goal, sampler, policy = spec.goal, spec.sampling, spec.policy
    by_index: dict[int, state.ChildInfo] = {}
    for child in sorted(children, key=lambda c: (c.index, c.run_id)):
        by_index.setdefault(child.index, child)
    active = [c for c in children if not c.final]
    pending = sorted(i for i in intents if i not in by_index)

    ending, why = None, ""
    best_any = state.best_value((v for c in children for v in c.series), goal)
    if cancel_requested:
        ending, why = "canceled", "the sweep was canceled"
    elif spec.goal_threshold is not None and state.reaches(best_any, spec.goal_threshold, goal):
        ending, why = "goal_threshold", (f"{spec.primary_metric_name} reached {best_any:g} "
                                         f"(goal threshold {spec.goal_threshold:g})")
    elif now >= spec.deadline:
        ending, why = "max_duration", f"max_duration_minutes ({spec.max_duration_minutes:g}) reached"
    if ending is not None:
        if active:
            return StepPlan(cancel=tuple(c.run_id for c in active), ending=ending, reason=why)
        status = RunStatus.CANCELED if ending == "canceled" else RunStatus.COMPLETED
        return StepPlan(ending=ending, finish=status, reason=why)

    stops: tuple[StopDecision, ...] = ()
    if not isinstance(policy, NoTerminationPolicy):
        series = {c.run_id: list(c.series) for c in children if c.series}
        candidates = [c.run_id for c in active if c.status is RunStatus.RUNNING and not c.stopped]
        if candidates:
            stops = tuple(policy.evaluate(series, goal, candidates=candidates))

    cap = spec.max_total_runs if sampler.max_total is None else min(spec.max_total_runs, sampler.max_total)
    slots = spec.max_concurrent_runs - len(active) - len(pending)
    wanted = max(0, min(slots, cap - len(intents)))
    samples = sampler.next_samples(history(intents, by_index, spec), wanted, goal) if wanted else []
    start = max(intents) + 1 if intents else 0
    new = tuple((start + j, s) for j, s in enumerate(samples))
    exhausted = len(intents) + len(samples) >= cap or len(samples) < wanted
    if exhausted and not active and not pending and not new:
        done = list(by_index.values())
        if done and all(c.status is RunStatus.FAILED for c in done):
            return StepPlan(stop=stops, finish=RunStatus.FAILED, reason=f"every child run failed ({len(done)})")
        return StepPlan(stop=stops, finish=RunStatus.COMPLETED,
                        reason=f"all {len(done)} child runs finished"
                        + (" (the grid is exhausted)" if cap < spec.max_total_runs else ""))
    return StepPlan(stop=stops, new_intents=new, submit=(*pending, *(i for i, _ in new)))


def child_arguments(base: Sequence[Any], params: Mapping[str, Any]) -> list[Any]:
    """The base arguments with every sampled value appended as ``<flag> <value>``."""
    extra: list[Any] = []
    for name, value in params.items():
        extra += [argument_name(name), value]
    return [*base, *extra]


# ---- acting -------------------------------------------------------------------------------------

def new_token() -> str:
    """Who drives a sweep: host:pid:start time:random (a dead local holder's lock is taken over at once)."""
    return f"{socket.gethostname()}:{os.getpid()}:{psutil.Process().create_time():.2f}:{secrets.token_hex(4)}"

_TAKE_LOCK = luascript.read("cluster.sweep", "take_sweep_lock.lua")


@dataclass
class _Sweep:
    """What this process remembers of one sweep between steps."""

    parent_id: str
    prefix: str
    spec: SweepSpec
    reader: state.SweepReader
    resumed: bool = False
    last_summary: str = ""
    last_shape: str = ""
    last_write: float = 0.0


@dataclass
class SweepDriver:
    """What one controller process remembers of the sweeps between ticks (the controller owns one)."""

    token: str = field(default_factory=new_token)
    sweeps: dict[str, _Sweep] = field(default_factory=dict)
    waiting: dict[str, str] = field(default_factory=dict)  # sweeps another driver holds (reported once per holder)
    synced: bool = False

    def drive(self, ws: Workspace, now: float) -> None:
        """Advance every active sweep by one step (called by the leading controller every tick)."""
        r = ws.redis
        if not self.synced or not r.exists(state.RK_SYNCED):
            _rebuild_active(ws)
            self.synced = True
        for member in sorted(r.smembers(state.RK_ACTIVE)):
            parent_id = str(member)
            try:
                self.step(ws, parent_id, now)
            except ClusterError as e:  # a server blip or a bad record: report, retry next tick
                self._forget_progress(parent_id)
                log.warning("sweep %s: %s", parent_id, e.message)
            except Exception as e:  # never let one sweep stop the controller's tick
                self._forget_progress(parent_id)
                log.exception("sweep %s: unexpected %s: %s", parent_id, type(e).__name__, e)
        if self.sweeps:  # forget the sweeps that ended or were unregistered (by this driver or another)
            active = {str(m) for m in r.smembers(state.RK_ACTIVE)}
            for parent_id in set(self.sweeps) - active:
                del self.sweeps[parent_id]

    def step(self, ws: Workspace, parent_id: str, now: float) -> StepPlan | None:
        """One idempotent step of one sweep. Returns the plan it carried out (None: nothing to do here)."""
        return _step(self, ws, parent_id, now)

    def _forget_progress(self, parent_id: str) -> None:
        sweep = self.sweeps.get(parent_id)
        if sweep is not None:
            sweep.resumed = False  # re-check half-done submissions next step


def _rebuild_active(ws: Workspace) -> None:
    """After a Redis wipe or a controller restart: the active sweeps from the object store's index."""
    ids = [info.key.rsplit("/", 1)[-1] for info in ws.store.list(state.ACTIVE_SWEEPS)]
    pipe = ws.redis.pipeline()
    if ids:
        pipe.sadd(state.RK_ACTIVE, *ids)
    pipe.set(state.RK_SYNCED, now_iso())
    pipe.execute()


def _dead_local_holder(holder: str) -> str:
    """The holder, if it was a process on this host that has exited (so its lock may be taken at once)."""
    try:
        host, pid_text, started, _rand = holder.rsplit(":", 3)
        pid = int(pid_text)
    except ValueError:
        return ""
    if host != socket.gethostname() or pid == os.getpid():
        return ""
    try:
        proc = psutil.Process(pid)
        if proc.status() != psutil.STATUS_ZOMBIE and f"{proc.create_time():.2f}" == started:
            return ""  # alive: it renews the lock while it drives the sweep
    except psutil.Error:
        pass
    return holder


def _lock(driver: SweepDriver, ws: Workspace, parent_id: str) -> tuple[bool, bool]:
    """(may we drive it now, did we just take it over from another driver)."""
    key = state.rk_lock(parent_id)
    holder = str(ws.redis.get(key) or "")
    dead = _dead_local_holder(holder) if holder and holder != driver.token else ""
    ok = bool(ws.redis.eval(_TAKE_LOCK, 1, key, driver.token, LOCK_MS, dead or "\x00"))
    if not ok and driver.waiting.get(parent_id) != holder:
        driver.waiting[parent_id] = holder
        log.info("sweep %s: driven by %s (lock held); waiting", parent_id, holder)
    return ok, ok and holder != driver.token


def _load(driver: SweepDriver, ws: Workspace, parent_id: str) -> _Sweep | None:
    sweep = driver.sweeps.get(parent_id)
    if sweep is not None:
        return sweep
    try:
        prefix = ws.runs.prefix(parent_id)
    except NotFoundError:
        _unregister(ws, parent_id)
        return None
    spec = state.load_spec(ws, prefix)
    sweep = _Sweep(parent_id=parent_id, prefix=prefix, spec=spec,
                   reader=state.SweepReader(ws, parent_id, prefix, spec.primary_metric_name))
    driver.sweeps[parent_id] = sweep
    return sweep


def _unregister(ws: Workspace, parent_id: str) -> None:
    ws.redis.srem(state.RK_ACTIVE, parent_id)
    with contextlib.suppress(NotFoundError):
        ws.store.delete(state.ACTIVE_SWEEPS + parent_id)
    ws.redis.delete(state.rk_lock(parent_id))


def _parent(ws: Workspace, parent_id: str, prefix: str) -> RunRecord:
    """The parent's record; re-seeds its Redis hash (and a stored cancel) if Redis lost it."""
    raw = ws.redis.hget(layout.rk_run(parent_id), "record")
    if raw:
        return RunRecord.from_dict(json.loads(raw))
    record = ws.runs.stored_record(parent_id)
    state.seed_parent(ws, record)
    if state.cancel_marked(ws, prefix):
        ws.redis.hset(layout.rk_run(parent_id), "cancel", "1")
    return record


def _step(driver: SweepDriver, ws: Workspace, parent_id: str, now: float) -> StepPlan | None:
    locked, taken_over = _lock(driver, ws, parent_id)
    if not locked:
        return None  # another controller drives it right now
    try:
        sweep = _load(driver, ws, parent_id)
    except (PayloadError, UsageError) as e:
        _fail_unreadable(ws, parent_id, e)
        return None
    if sweep is None:
        return None
    if taken_over:
        sweep.resumed = False  # someone else may have driven it meanwhile: check its submissions again
    parent = _parent(ws, parent_id, sweep.prefix)
    if parent.status.is_final:
        _unregister(ws, parent_id)
        return None
    reader = sweep.reader
    intents = reader.intents()
    children = reader.children()
    if not sweep.resumed:
        _resume(ws, sweep, children)
        sweep.resumed = True
    cancel_requested = ws.redis.hget(layout.rk_run(parent_id), "cancel") == "1"
    plan = plan_step(sweep.spec, children, intents, cancel_requested=cancel_requested, now=now)
    _act(ws, sweep, parent, plan, children)
    return plan


def _fail_unreadable(ws: Workspace, parent_id: str, error: ClusterError) -> None:
    try:
        record = ws.runs.record(parent_id)
    except NotFoundError:
        _unregister(ws, parent_id)
        return
    if not record.status.is_final:
        failed = record.with_status(RunStatus.FAILED, error=RunError(kind="infrastructure",
                                                                      message=f"unreadable sweep: {error.message}"))
        state.write_parent(ws, failed)
    _unregister(ws, parent_id)


def _resume(ws: Workspace, sweep: _Sweep, children: Sequence[state.ChildInfo]) -> None:
    """First step of a sweep in this process: finish submissions a dead controller cut short."""
    for child in children:
        if child.record is None:  # spec.json written, run.json not: complete the submission
            cp = state.child_prefix(sweep.prefix, child.run_id)
            try:
                spec = RunSpec.from_dict(ws.store.get_json(cp + layout.RUN_SPEC))
            except NotFoundError:
                continue
            record = RunRecord(run_id=spec.run_id, experiment=spec.experiment, status=RunStatus.QUEUED,
                               prefix=spec.prefix, pool=spec.pool, tags=spec.tags, parent_id=spec.parent_id,
                               arguments=tuple(str(a) for a in spec.arguments)).with_status(RunStatus.QUEUED)
            ws.runs.create(spec, record)
            ws.enqueue(child.run_id, spec.pool)
        elif child.status is RunStatus.QUEUED:  # maybe never queued: a second message is harmless
            if not ws.redis.hexists(layout.rk_run(child.run_id), "record"):
                ws.runs.seed(child.record)
            ws.enqueue(child.run_id, child.record.pool)


def _act(ws: Workspace, sweep: _Sweep, parent: RunRecord, plan: StepPlan,
         children: Sequence[state.ChildInfo]) -> None:
    reader = sweep.reader
    info: dict[str, Any]
    for decision in plan.stop:
        info = {"by": decision.policy, "policy": decision.policy, "reason": decision.reason,
                "compared": decision.compared, "at": now_iso(), "parent": sweep.parent_id}
        ws.store.put_json(state.child_prefix(sweep.prefix, decision.run_id) + state.STOPPED, info)
        reader.mark_stopped(decision.run_id, info)
        ws.runs.cancel(decision.run_id)
        log.info("sweep %s: stopping %s: %s: %s", sweep.parent_id, decision.run_id, decision.policy, decision.reason)
    if plan.cancel:
        by_id = {c.run_id: c for c in children}
        for run_id in plan.cancel:
            child = by_id.get(run_id)
            if plan.ending != "canceled" and child is not None and not child.stopped:
                info = {"by": plan.ending, "policy": None, "reason": plan.reason, "compared": {}, "at": now_iso(),
                        "parent": sweep.parent_id}
                ws.store.put_json(state.child_prefix(sweep.prefix, run_id) + state.STOPPED, info)
                reader.mark_stopped(run_id, info)
            if child is not None and child.record is None:
                continue  # half-submitted: _resume completes it first, then it is canceled
            ws.runs.cancel(run_id)
    for index, params in plan.new_intents:  # every intent is stored before any of them is submitted
        ws.store.put_json(state.intent_key(sweep.prefix, index), state.Intent(index, params, now_iso()).to_dict())
        reader.remember_intent(index, params)
    if plan.submit:
        intents = reader.intents()
        for index in plan.submit:
            _submit_child(ws, sweep, parent, index, intents[index])
        children = reader.children()
    if plan.finish is not None:
        _finish(ws, sweep, parent, plan, reader.children())
    else:
        _write_summary(ws, sweep, parent, children, None)


def _submit_child(ws: Workspace, sweep: _Sweep, parent: RunRecord, index: int, params: dict[str, Any]) -> None:
    spec = sweep.spec
    rc = spec.run_config
    rc = rc.with_arguments(child_arguments((), params))
    tags = {"kind": state.KIND_CHILD, "parent": sweep.parent_id, "sweep_index": str(index),
            "hyperparameters": json.dumps(params)}
    run = submit_run(Experiment(ws, spec.experiment), rc, tags=tags, parent=parent, snapshot=spec.snapshot)
    sweep.reader.known_children[index] = run.id


def _write_summary(ws: Workspace, sweep: _Sweep, parent: RunRecord, children: Sequence[state.ChildInfo],
                   end_reason: str | None) -> None:
    """Rewrite summary.json when a child appears, changes status or is stopped, when the sweep ends -- and,
    while children only log new values, at most every SUMMARY_EVERY seconds."""
    summary = state.build_summary(sweep.spec, parent, children, end_reason=end_reason)
    text = json.dumps(summary, sort_keys=True, default=str)
    if text == sweep.last_summary:
        return
    shape = json.dumps([parent.status.value, [(c.run_id, c.status.value, bool(c.stopped)) for c in children]])
    if shape == sweep.last_shape and time.monotonic() - sweep.last_write < SUMMARY_EVERY:
        return
    ws.store.put_json(sweep.prefix + state.SUMMARY, {**summary, "updated": now_iso()})
    sweep.last_summary, sweep.last_shape, sweep.last_write = text, shape, time.monotonic()


def _finish(ws: Workspace, sweep: _Sweep, parent: RunRecord, plan: StepPlan,
            children: Sequence[state.ChildInfo]) -> None:
    assert plan.finish is not None
    error = RunError(kind="user", message=plan.reason) if plan.finish is RunStatus.FAILED else None
    final = parent.with_status(plan.finish, error=error)
    _write_summary(ws, sweep, final, children, plan.reason)
    state.write_parent(ws, final)
    log.info("sweep %s: %s: %s", sweep.parent_id, plan.finish.value, plan.reason)
    _unregister(ws, sweep.parent_id)

