"""The sweep driver's steps on in-memory fakes: children submitted within max_concurrent_runs, each grid point
once, the parent finished -- and no duplicate child when a new controller (a new driver) takes over."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cluster import Experiment, ScriptRunConfig, layout
from cluster.records import RunStatus
from cluster.sweep import GridParameterSampling, HyperDriveConfig, PrimaryMetricGoal, choice
from cluster.sweep.driver import SweepDriver
from cluster.testing import MemoryBroker, play_next_run
from cluster.workspace import Workspace

T0 = time.time()  # the sweep's max_duration_minutes counts from its submit, now


def _sweep(ws: Workspace, train_dir: Path, concurrent: int = 2):  # type: ignore[no-untyped-def]
    config = HyperDriveConfig(run_config=ScriptRunConfig(train_dir, "train.py", compute_target="cpu"),
                              hyperparameter_sampling=GridParameterSampling({"--a": choice(1, 2, 3)}),
                              primary_metric_name="score", primary_metric_goal=PrimaryMetricGoal.MAXIMIZE,
                              max_total_runs=10, max_concurrent_runs=concurrent)
    return Experiment(ws, "sweepy").submit(config)


def _child_args(ws: Workspace, run_id: str) -> tuple[str, ...]:
    return ws.runs.record(run_id).arguments


def test_a_grid_sweep_runs_each_point_once_within_concurrency(mem_ws: Workspace, broker: MemoryBroker,
                                                              train_dir: Path) -> None:
    run = _sweep(mem_ws, train_dir, concurrent=2)
    assert run.get_status() == "Running" and broker.sent == []  # the controller drives it, not submit
    driver = SweepDriver()
    driver.drive(mem_ws, T0)
    assert len(broker.queued_run_ids("cpu")) == 2
    driver.drive(mem_ws, T0 + 1)  # nothing finished: nothing new
    assert len(broker.sent) == 2
    seen = []
    while (child := play_next_run(mem_ws, "cpu", metrics={"score": [1.0]})) is not None:
        seen.append(_child_args(mem_ws, child))
        driver.drive(mem_ws, T0 + 2 + len(seen))
        assert len(broker.queued_run_ids("cpu")) <= 2
    assert sorted(seen) == [("--a", "1"), ("--a", "2"), ("--a", "3")]
    assert mem_ws.runs.record(run.id).status is RunStatus.COMPLETED
    assert driver.sweeps == {}  # a finished sweep is forgotten
    summary = mem_ws.store.get_json(run.prefix + "summary.json")
    assert summary["status"] == "Completed" and len(summary["children"]) == 3


def test_a_new_driver_takes_over_without_duplicating_children(mem_ws: Workspace, broker: MemoryBroker,
                                                              train_dir: Path) -> None:
    run = _sweep(mem_ws, train_dir, concurrent=1)
    first = SweepDriver(token="host:1:1.00:aaaa")
    first.drive(mem_ws, T0)
    assert len(broker.sent) == 1
    mem_ws.redis.delete(layout.rk_sweep_lock(run.id))  # the first controller died; its lock expired
    second = SweepDriver(token="host:2:2.00:bbbb")
    second.drive(mem_ws, T0 + 1)
    second.drive(mem_ws, T0 + 2)
    # the child the first driver submitted is not created again (its message may be: that is harmless)
    assert len({run_id for run_id, _pool in broker.sent}) == 1 and len(run.get_children()) == 1
    first.drive(mem_ws, T0 + 3)  # and the first one, back, waits: the second holds the lock
    assert len(run.get_children()) == 1
    assert play_next_run(mem_ws, "cpu", metrics={"score": [2.0]}) is not None
    first.drive(mem_ws, T0 + 4)  # still the second's sweep
    assert len(run.get_children()) == 1
    second.drive(mem_ws, T0 + 5)
    assert len(run.get_children()) == 2


def test_a_canceled_sweep_cancels_its_children_and_ends(mem_ws: Workspace, broker: MemoryBroker,
                                                        train_dir: Path) -> None:
    run = _sweep(mem_ws, train_dir, concurrent=2)
    driver = SweepDriver()
    driver.drive(mem_ws, T0)
    run.cancel()
    driver.drive(mem_ws, T0 + 1)
    children = [mem_ws.runs.record(rid) for rid, _pool in broker.sent]
    assert all(c.status is RunStatus.CANCELED for c in children)
    driver.drive(mem_ws, T0 + 2)
    assert mem_ws.runs.record(run.id).status is RunStatus.CANCELED


def test_intents_keep_their_stored_form_and_a_damaged_one_is_named(mem_ws: Workspace, broker: MemoryBroker,
                                                                   train_dir: Path) -> None:
    from cluster.errors import PayloadError
    from cluster.sweep.state import SweepReader, intent_key

    run = _sweep(mem_ws, train_dir, concurrent=2)
    SweepDriver().drive(mem_ws, T0)
    key = intent_key(run.prefix, 0)
    stored = mem_ws.store.get_json(key)
    assert sorted(stored) == ["at", "index", "params"] and stored["index"] == 0 and stored["params"] == {"--a": 1}
    reader = SweepReader(mem_ws, run.id, run.prefix, "score")
    assert reader.intents() == {0: {"--a": 1}, 1: {"--a": 2}}
    mem_ws.store.put_json(key, {"index": 0, "params": ["--a", 1]})
    with pytest.raises(PayloadError, match=f"^sweep intent {key}: params must be a mapping, got"):
        SweepReader(mem_ws, run.id, run.prefix, "score").intents()
