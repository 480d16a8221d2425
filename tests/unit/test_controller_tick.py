"""The controller's tick on in-memory fakes: scaling a pool, supervising runs whose node was lost, re-queueing
stranded runs and recovering after a Redis wipe -- and the pure node-loss decision."""

from __future__ import annotations

import json

from cluster import layout
from cluster.compute import ComputeTarget, NodePool, rk_pool_status
from cluster.controller import Controller, ControllerConfig, node_lost_decision
from cluster.records import RunRecord, RunSpec, RunStatus
from cluster.testing import MemoryBroker, MemoryProvider
from cluster.workspace import Workspace

T0 = 1_800_000_000.0
CONFIG = ControllerConfig(node_lost_seconds=10.0, max_infra_attempts=2, stranded_check_seconds=15.0)


def _pool(ws: Workspace, name: str = "cpu", max_nodes: int = 2) -> None:
    ComputeTarget.create(ws, name, NodePool.provisioning_configuration(max_nodes=max_nodes))


def _submit(ws: Workspace, run_id: str, pool: str = "cpu") -> RunRecord:
    prefix = layout.run_prefix("exp", run_id)
    spec = RunSpec(run_id=run_id, experiment="exp", snapshot="0" * 64, entry_script="train.py", pool=pool,
                   prefix=prefix)
    record = RunRecord(run_id=run_id, experiment="exp", status=RunStatus.QUEUED, prefix=prefix,
                       pool=pool).with_status(RunStatus.QUEUED, at=T0)
    ws.runs.create(spec, record)
    ws.enqueue(run_id, pool)
    return record


def _heartbeat(ws: Workspace, node: str, pool: str, at: float, state: str = "idle", run: str = "") -> None:
    ws.redis.hset(layout.rk_node(node), mapping={"pool": pool, "state": state, "heartbeat": at, "run": run,
                                                 "started": T0})
    ws.redis.sadd(layout.RK_NODES, node)


def _status(ws: Workspace, pool: str = "cpu") -> dict:
    return json.loads(ws.redis.get(rk_pool_status(pool)))


def test_a_queued_run_starts_one_node_and_the_pool_status_is_published(mem_ws: Workspace) -> None:
    _pool(mem_ws)
    _submit(mem_ws, "exp_1_a")
    provider = MemoryProvider()
    controller = Controller(mem_ws, provider, CONFIG)
    controller.tick(T0)
    assert provider.nodes == {"cpu": ["cpu-m1"]}
    assert (_status(mem_ws)["queuedRuns"], _status(mem_ws)["targetNodeCount"]) == (1, 1)
    controller.tick(T0 + 1)  # still starting: no second node for the same run
    assert provider.nodes == {"cpu": ["cpu-m1"]} and _status(mem_ws)["nodes"]["starting"] == 1
    _heartbeat(mem_ws, "cpu-m1", "cpu", T0 + 2)
    controller.tick(T0 + 2)
    assert _status(mem_ws)["nodes"]["idle"] == 1 and _status(mem_ws)["nodes"]["starting"] == 0


def test_a_lost_node_puts_its_run_back_in_the_queue_then_fails_it(mem_ws: Workspace, broker: MemoryBroker) -> None:
    _pool(mem_ws)
    record = _submit(mem_ws, "exp_1_a")
    provider = MemoryProvider()
    controller = Controller(mem_ws, provider, CONFIG)
    controller.tick(T0)
    (node,) = provider.nodes["cpu"]
    for attempt in (1, 2):
        assert broker.deliver("cpu") == record.run_id
        claim = mem_ws.runs.claim(record.run_id, node, 60_000)
        live = claim.record.with_status(RunStatus.PREPARING, at=T0, attempt=claim.attempt, node=node,  # type: ignore[union-attr]
                                        attempts=(*claim.record.attempts, {"attempt": claim.attempt}))  # type: ignore[union-attr]
        assert mem_ws.runs.write(live, claim.token)
        _heartbeat(mem_ws, node, "cpu", T0 + 100 * attempt, state="busy", run=record.run_id)
        controller.tick(T0 + 100 * attempt + 1)  # heartbeating: nothing happens
        assert mem_ws.runs.status(record.run_id) is RunStatus.PREPARING
        controller.tick(T0 + 100 * attempt + 30)  # silent for 30 s > 10 s: lost
        assert (node, True) in provider.stopped
        broker.ack(record.run_id)
        if attempt == 1:
            assert mem_ws.runs.status(record.run_id) is RunStatus.QUEUED
            assert broker.queued_run_ids("cpu") == {record.run_id}  # queued again for another node
            node = provider.nodes["cpu"][-1] if provider.nodes["cpu"] else node
    failed = mem_ws.runs.stored_record(record.run_id)
    assert failed.status is RunStatus.FAILED and failed.error is not None and failed.error.kind == "node-lost"
    assert [a["outcome"] for a in failed.attempts] == ["node-lost", "node-lost"]


def test_a_queued_run_without_a_message_is_queued_again_after_two_checks(mem_ws: Workspace,
                                                                         broker: MemoryBroker) -> None:
    _pool(mem_ws, max_nodes=1)
    record = _submit(mem_ws, "exp_1_a")
    assert broker.drop("cpu") == [record.run_id]  # the broker lost the message
    controller = Controller(mem_ws, MemoryProvider(), CONFIG)
    controller.tick(T0)  # first sight: maybe a submit between seeding and enqueueing
    assert broker.queued_run_ids("cpu") == set()
    controller.tick(T0 + 20)
    assert broker.queued_run_ids("cpu") == {record.run_id}
    controller.tick(T0 + 40)  # it has a message now: not queued a third time
    assert [s for s in broker.sent if s[0] == record.run_id] == [(record.run_id, "cpu")] * 2


def test_after_a_redis_wipe_queued_and_live_runs_are_recovered_from_the_store(mem_ws: Workspace,
                                                                              broker: MemoryBroker) -> None:
    _pool(mem_ws, max_nodes=1)
    queued = _submit(mem_ws, "exp_1_q")
    live = _submit(mem_ws, "exp_2_l")
    claim = mem_ws.runs.claim(live.run_id, "n1", 60_000)
    assert mem_ws.runs.write(claim.record.with_status(RunStatus.PREPARING, node="n1"), claim.token)  # type: ignore[union-attr]
    controller = Controller(mem_ws, MemoryProvider(), CONFIG)
    controller.tick(T0)
    mem_ws.redis.flushall()
    broker.drop("cpu")
    controller.tick(T0 + 1)
    assert broker.queued_run_ids("cpu") == {queued.run_id, live.run_id}
    assert mem_ws.runs.status(live.run_id) is RunStatus.QUEUED


def _live(status: RunStatus = RunStatus.RUNNING, lost_before: int = 0) -> RunRecord:
    history = tuple({"attempt": i + 1, "outcome": "node-lost"} for i in range(lost_before))
    rec = RunRecord(run_id="e_1_a", experiment="e", status=RunStatus.QUEUED, prefix="p/", node="n1",
                    attempt=lost_before + 1).with_status(RunStatus.PREPARING, at=1.0)
    if status is not RunStatus.PREPARING:
        rec = rec.with_status(status, at=2.0)
    return rec.with_status(rec.status, attempts=(*history, {"attempt": lost_before + 1}))


def test_node_lost_decision_retries_then_gives_up() -> None:
    again = node_lost_decision(_live(), max_infra_attempts=3, lost_after=10.0, now=50.0)
    assert again.status is RunStatus.QUEUED and again.node is None
    assert again.attempts[-1] == {"attempt": 1, "ended": 50.0, "outcome": "node-lost"}
    given_up = node_lost_decision(_live(lost_before=2), max_infra_attempts=3, lost_after=10.0, now=50.0)
    assert given_up.status is RunStatus.FAILED and given_up.error is not None
    assert given_up.error.kind == "node-lost" and "gave up after 3" in given_up.error.message
    assert "Failed" in given_up.timestamps


def test_node_lost_decision_from_every_live_state_is_a_valid_transition() -> None:
    for status in (RunStatus.PREPARING, RunStatus.RUNNING, RunStatus.FINALIZING):
        assert node_lost_decision(_live(status), max_infra_attempts=3, lost_after=10.0,
                                  now=5.0).status is RunStatus.QUEUED


def test_finished_runs_leave_the_live_index_and_a_final_record_only_in_redis_reaches_run_json(
        mem_ws: Workspace) -> None:
    """Recovery after a Redis wipe reads the live index: runs leave it once run.json is final. A node that died
    between its final Redis write and run.json leaves run.json behind; after a grace period the controller
    copies Redis' final record there (Redis is written first: it is the newer)."""
    from cluster.controller import FINAL_RECORD_GRACE_SECONDS

    _pool(mem_ws)
    done, behind = _submit(mem_ws, "exp_1_done"), _submit(mem_ws, "exp_2_behind")
    assert {"exp_1_done", "exp_2_behind"} <= set(mem_ws.runs.list_live_run_ids())
    for rec in (done, behind):  # both final in Redis (the node's fenced final write), one also in run.json
        token = mem_ws.runs.claim(rec.run_id, "n1", 10_000).token
        walked = rec.with_status(RunStatus.PREPARING, at=T0 + 1).with_status(RunStatus.RUNNING, at=T0 + 2)
        final = walked.with_status(RunStatus.FINALIZING, at=T0 + 4).with_status(RunStatus.COMPLETED, at=T0 + 5,
                                                                                 attempt=1, committed=1)
        assert mem_ws.runs.write(final, token, store=rec is done)
    controller = Controller(mem_ws, MemoryProvider(), CONFIG)
    controller.tick(T0 + 10)
    live = set(mem_ws.runs.list_live_run_ids())
    assert "exp_1_done" not in live and "exp_2_behind" in live  # run.json of the second is not final yet
    assert mem_ws.runs.stored_record("exp_2_behind").status is RunStatus.QUEUED
    controller.tick(T0 + 5 + FINAL_RECORD_GRACE_SECONDS + 10)
    assert "exp_2_behind" not in set(mem_ws.runs.list_live_run_ids())
    assert mem_ws.runs.stored_record("exp_2_behind").status is RunStatus.COMPLETED
