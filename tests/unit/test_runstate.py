"""The run repository (RunState) on in-memory fakes: submit, claim, fenced writes, requeue, cancel, listing."""

from __future__ import annotations

import pytest

from cluster import layout
from cluster.errors import NotFoundError
from cluster.records import RunRecord, RunSpec, RunStatus
from cluster.runstate import RunState, rk_active
from cluster.workspace import Workspace

LEASE_MS = 60_000


def _create(runs: RunState, run_id: str = "exp_1_aa", pool: str = "cpu") -> RunRecord:
    prefix = layout.run_prefix("exp", run_id)
    spec = RunSpec(run_id=run_id, experiment="exp", snapshot="0" * 64, entry_script="train.py", pool=pool,
                   prefix=prefix)
    record = RunRecord(run_id=run_id, experiment="exp", status=RunStatus.QUEUED, prefix=prefix, pool=pool)
    runs.create(spec, record.with_status(RunStatus.QUEUED))
    return record


def test_create_writes_the_record_first_then_the_live_state(mem_ws: Workspace) -> None:
    runs = mem_ws.runs
    record = _create(runs)
    assert runs.status(record.run_id) is RunStatus.QUEUED
    assert runs.stored_record(record.run_id).status is RunStatus.QUEUED
    assert runs.spec(record.run_id).entry_script == "train.py"
    assert runs.prefix(record.run_id) == record.prefix
    assert runs.list_run_ids("exp") == [record.run_id] and runs.list_experiments() == ["exp"]
    mem_ws.redis.flushall()  # Redis lost everything: the object store still answers
    assert runs.prefix(record.run_id) == record.prefix and runs.status(record.run_id) is RunStatus.QUEUED


def test_one_attempt_holds_the_lease_and_a_stale_one_writes_nothing(mem_ws: Workspace) -> None:
    runs = mem_ws.runs
    record = _create(runs)
    first = runs.claim(record.run_id, "node-a", LEASE_MS)
    assert (first.outcome, first.attempt) == ("ok", 1) and first.spec is not None
    assert runs.claim(record.run_id, "node-b", LEASE_MS).outcome == "held"
    preparing = first.record.with_status(RunStatus.PREPARING, attempt=1, node="node-a")  # type: ignore[union-attr]
    assert runs.write(preparing, first.token)
    assert runs.status(record.run_id) is RunStatus.PREPARING
    assert runs.stored_record(record.run_id).status is RunStatus.PREPARING
    assert runs.renew(record.run_id, first.token, LEASE_MS) == 0

    # the lease is lost (expired): another attempt takes the run, the first one is fenced off
    mem_ws.redis.delete(layout.rk_run_lease(record.run_id))
    second = runs.claim(record.run_id, "node-b", LEASE_MS)
    assert (second.outcome, second.attempt) == ("ok", 2)
    assert not runs.write(preparing.with_status(RunStatus.RUNNING), first.token)
    assert runs.renew(record.run_id, first.token, LEASE_MS) == -1
    assert runs.status(record.run_id) is RunStatus.PREPARING


def test_a_final_write_releases_the_run_and_a_redelivery_is_refused(mem_ws: Workspace) -> None:
    runs = mem_ws.runs
    record = _create(runs)
    claim = runs.claim(record.run_id, "node-a", LEASE_MS)
    rec = claim.record.with_status(RunStatus.PREPARING, attempt=1)  # type: ignore[union-attr]
    for status in (RunStatus.RUNNING, RunStatus.FINALIZING, RunStatus.COMPLETED):
        rec = rec.with_status(status)
        assert runs.write(rec, claim.token)
    assert not runs.holds(record.run_id, claim.token)
    assert not mem_ws.redis.sismember(rk_active("cpu"), record.run_id)
    assert runs.claim(record.run_id, "node-b", LEASE_MS).outcome == "final"
    assert runs.stored_record(record.run_id).status is RunStatus.COMPLETED


def test_cancel_a_queued_run_never_starts_it_and_a_running_one_is_asked(mem_ws: Workspace) -> None:
    runs = mem_ws.runs
    queued = _create(runs, "exp_1_q")
    assert runs.cancel(queued.run_id) == "canceled"
    assert runs.stored_record(queued.run_id).status is RunStatus.CANCELED
    assert runs.claim(queued.run_id, "node-a", LEASE_MS).outcome == "final"
    assert runs.cancel(queued.run_id) == "Canceled"  # a finished run stays as it is

    running = _create(runs, "exp_2_r")
    claim = runs.claim(running.run_id, "node-a", LEASE_MS)
    assert runs.write(claim.record.with_status(RunStatus.PREPARING), claim.token)  # type: ignore[union-attr]
    assert runs.cancel(running.run_id) == "requested"
    assert runs.cancel_requested(running.run_id)
    assert runs.renew(running.run_id, claim.token, LEASE_MS) == 1  # the node learns it at its next renewal


def test_requeue_only_while_the_expected_attempt_holds_the_run(mem_ws: Workspace) -> None:
    runs = mem_ws.runs
    record = _create(runs)
    claim = runs.claim(record.run_id, "node-a", LEASE_MS)
    live = claim.record.with_status(RunStatus.PREPARING, attempt=1, node="node-a")  # type: ignore[union-attr]
    assert runs.write(live, claim.token)
    assert not runs.requeue(live.with_status(RunStatus.QUEUED), expected_holder="node-z/9")
    assert runs.requeue(live.with_status(RunStatus.QUEUED), expected_holder=claim.token)
    assert runs.status(record.run_id) is RunStatus.QUEUED
    assert runs.claim(record.run_id, "node-b", LEASE_MS).attempt == 2


def test_an_unknown_run_is_not_found(mem_ws: Workspace) -> None:
    with pytest.raises(NotFoundError, match="no run with id"):
        mem_ws.runs.record("nope_1_x")
