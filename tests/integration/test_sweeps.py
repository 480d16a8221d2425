"""Hyperparameter sweeps end to end on the session's embedded cluster: real Redis, a real S3 server, the real
controller driving the sweeps, and node processes it starts for an autoscaled pool."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cluster import ComputeTarget, Estimator, Experiment, NodePool, Run, Workspace, embedded
from cluster.compute import CONTROLLER_LEADER
from cluster.settings import Settings
from cluster.sweep import (
    BanditPolicy,
    GridParameterSampling,
    HyperDriveConfig,
    HyperDriveRun,
    PrimaryMetricGoal,
    RandomParameterSampling,
    choice,
    uniform,
)
from cluster.sweep import state as sweep_state
from tests.helpers import unique, wait_until

pytestmark = pytest.mark.integration

TRAIN = """
import argparse, sys, time
from cluster import Run

p = argparse.ArgumentParser()
p.add_argument("--a", type=float, default=1.0)
p.add_argument("--b", type=float, default=1.0)
p.add_argument("--mode", default="product")
p.add_argument("--sleep", type=float, default=0.2)
args = p.parse_args()
run = Run.get_context()
print("arguments", sys.argv[1:], flush=True)
if args.mode == "crash":
    print("crashing on purpose", file=sys.stderr, flush=True)
    sys.exit(3)
if args.mode == "lag":  # a bad value, slowly and for long: early termination must stop it
    for _ in range(40):
        run.log("score", 0.1)
        time.sleep(0.5)
elif args.mode == "good":  # faster than the laggard, so it soon reaches every interval the laggard did
    for _ in range(30):
        run.log("score", 1.0)
        time.sleep(0.1)
elif args.mode == "sleep":
    run.log("score", 0.5)
    time.sleep(60)
else:
    time.sleep(args.sleep)
    run.log("score", args.a * args.b)
"""






@pytest.fixture(scope="module")
def ws(settings: Settings) -> Workspace:
    return Workspace(settings)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("sweep-src")
    (src / "train.py").write_text(TRAIN)
    return src


@pytest.fixture(scope="module")
def pool(ws: Workspace) -> Iterator[NodePool]:
    """An autoscaled pool for this module: the controller starts its nodes when children queue."""
    name = unique("sweep")
    target = ComputeTarget.create(ws, name, NodePool.provisioning_configuration(
        vm_size="small", min_nodes=0, max_nodes=3, idle_seconds_before_scaledown=30))
    yield target
    target.delete()
    wait_until(lambda: name not in ws.compute_targets, 60, f"pool {name} deleted")


def estimator(source: Path, pool: NodePool, **params: Any) -> Estimator:
    return Estimator(source_directory=source, entry_script="train.py", script_params=params, compute_target=pool)


def stamp(record: Any, *statuses: str) -> float:
    for s in statuses:
        if s in record.timestamps:
            return datetime.fromisoformat(record.timestamps[s]).timestamp()
    raise AssertionError(f"{record.run_id} has none of {statuses}: {record.timestamps}")


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _e in intervals] + [(e, -1) for _s, e in intervals])  # ends first on ties
    current = peak = 0
    for _t, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


def records(ws: Workspace, hd: HyperDriveRun) -> list[Any]:
    return [ws.runs.record(run.id) for run in hd.get_children()]


def controller_errors(cluster_dir: Path, sweep_id: str) -> list[str]:
    log = Path(next(p.log for p in embedded.State.load(cluster_dir).processes if p.name == "controller"))
    return [line for line in log.read_text(errors="replace").splitlines() if sweep_id in line and
            ("unexpected" in line or "Error" in line)]


def test_grid_runs_each_combination_once_within_concurrency(ws: Workspace, source: Path, pool: NodePool,
                                                            cluster_dir: Path, tmp_path: Path) -> None:
    sampling = GridParameterSampling({"--a": choice(1, 2), "--b": choice(1, 2, 3)})
    hd = HyperDriveConfig(estimator=estimator(source, pool, **{"--sleep": 0.3}), hyperparameter_sampling=sampling,
                          primary_metric_name="score", primary_metric_goal=PrimaryMetricGoal.MAXIMIZE,
                          max_total_runs=10, max_concurrent_runs=2)
    exp = Experiment(ws, unique("sweep-grid"))
    run = exp.submit(hd, tags={"purpose": "test"})
    assert isinstance(run, HyperDriveRun)
    assert run.get_status() == "Running"  # submit returns at once: the controller drives the sweep
    details = run.wait_for_completion(timeout=120)
    assert details["status"] == "Completed" and details["tags"] == {"purpose": "test", "kind": "sweep"}

    children = run.get_children()
    assert len(children) == 6  # the grid has 6 combinations, fewer than max_total_runs
    recs = records(ws, run)
    combos = sorted((int(float(r.arguments[-3])), int(float(r.arguments[-1]))) for r in recs)
    assert combos == sorted(itertools.product((1, 2), (1, 2, 3)))
    assert sorted(int(r.tags["sweep_index"]) for r in recs) == list(range(6))
    for r in recs:
        assert r.status.value == "Completed" and r.parent_id == run.id and r.tags["parent"] == run.id
        assert r.arguments[:2] == ("--sleep", "0.3") and r.arguments[2::2] == ("--a", "--b")
        assert r.prefix.startswith(f"{run.prefix}children/{r.run_id}/")
    # children live under the parent in the object store, and are listed with it
    assert sorted(ws.store.list_dirs(run.prefix + "children/")) == sorted(c.id for c in children)
    listed = {r.id for r in exp.get_runs(include_children=True)}
    assert listed == {run.id, *(c.id for c in children)}
    assert [r.id for r in exp.get_runs()] == [run.id]
    # max_concurrent_runs, from the recorded timestamps (queued..final is stricter than running..final)
    assert peak_overlap([(stamp(r, "Queued"), stamp(r, "Completed")) for r in recs]) <= 2
    assert peak_overlap([(stamp(r, "Running"), stamp(r, "Completed")) for r in recs]) <= 2

    best = run.get_best_run_by_primary_metric()
    assert best is not None and best.get_metrics()["score"] == 6.0
    assert best.get_details()["arguments"] == ["--sleep", "0.3", "--a", "2", "--b", "3"]
    rows = run.get_children_sorted_by_primary_metric()
    assert [r["best_primary_metric"] for r in rows] == [6.0, 4.0, 3.0, 2.0, 2.0, 1.0]
    assert all(r["ranked"] and r["status"] == "Completed" for r in rows)
    assert rows[0]["hyperparameters"] == {"--a": 2, "--b": 3}
    assert len(run.get_children_sorted_by_primary_metric(top=2)) == 2
    assert run.get_metrics() == {c.id: {"score": c.get_metrics()["score"]} for c in children}

    summary = ws.store.get_json(run.prefix + "summary.json")
    assert summary["status"] == "Completed" and summary["best"]["value"] == 6.0
    assert len(summary["children"]) == 6 and all(c["duration_seconds"] > 0 for c in summary["children"])
    again = HyperDriveRun.from_id(ws, run.id)  # re-attach by id, as `cluster sweep show` does
    assert again.get_best_run_by_primary_metric().id == best.id  # type: ignore[union-attr]
    assert not controller_errors(cluster_dir, run.id)

    from cluster.sweep.plot import write_plot

    assert write_plot(again.get_summary(live=True), tmp_path / "plot.png").stat().st_size > 1000


def test_bandit_stops_the_laggard_and_a_crash_is_reported_not_ranked(ws: Workspace, source: Path,
                                                                     pool: NodePool) -> None:
    sampling = GridParameterSampling({"--mode": choice("good", "lag", "crash")})
    hd = HyperDriveConfig(estimator=estimator(source, pool), hyperparameter_sampling=sampling,
                          policy=BanditPolicy(evaluation_interval=1, slack_factor=0.2),
                          primary_metric_name="score", primary_metric_goal="maximize", max_total_runs=3,
                          max_concurrent_runs=3)
    run = Experiment(ws, unique("sweep-bandit")).submit(hd)
    assert run.wait_for_completion(timeout=120)["status"] == "Completed"  # a crashing child does not stop it

    by_mode = {r.arguments[-1]: r for r in records(ws, run)}
    assert set(by_mode) == {"good", "lag", "crash"}
    assert by_mode["good"].status.value == "Completed"
    assert by_mode["crash"].status.value == "Failed" and by_mode["crash"].error.kind == "user"
    lag = by_mode["lag"]
    assert lag.status.value == "Canceled"
    assert stamp(lag, "Canceled") - stamp(lag, "Running") < 15  # it would have run 20 s
    stopped = ws.store.get_json(lag.prefix + "stopped.json")
    assert stopped["by"] == "BanditPolicy" and stopped["policy"] == "BanditPolicy"
    assert stopped["compared"]["value"] == 0.1 and stopped["compared"]["best"] == 1.0
    assert stopped["compared"]["threshold"] == pytest.approx(1.0 / 1.2)

    rows = run.get_children_sorted_by_primary_metric()
    assert [r["ranked"] for r in rows] == [True, False, False]
    assert rows[0]["run_id"] == by_mode["good"].run_id and rows[0]["rank"] == 1
    notes = {r["hyperparameters"]["--mode"]: r["note"] for r in rows}
    assert notes["crash"].startswith("failed") and notes["lag"] == "stopped by BanditPolicy"
    best = run.get_best_run_by_primary_metric()
    assert best is not None and best.id == by_mode["good"].run_id
    summary = ws.store.get_json(run.prefix + "summary.json")
    lag_row = next(c for c in summary["children"] if c["run_id"] == lag.run_id)
    assert lag_row["stopped_by"]["by"] == "BanditPolicy" and lag_row["status"] == "Canceled"
    assert summary["counts"]["stopped_early"] == 1 and summary["counts"]["Failed"] == 1


def test_cancel_stops_the_sampler_and_every_child(ws: Workspace, source: Path, pool: NodePool) -> None:
    sampling = RandomParameterSampling({"--a": uniform(0, 1)}, seed=3)
    hd = HyperDriveConfig(estimator=estimator(source, pool, **{"--mode": "sleep"}), hyperparameter_sampling=sampling,
                          primary_metric_name="score", primary_metric_goal="maximize", max_total_runs=6,
                          max_concurrent_runs=2)
    run = Experiment(ws, unique("sweep-cancel")).submit(hd)
    wait_until(lambda: [r.status.value for r in records(ws, run)] == ["Running", "Running"], 90,
               "two children running")
    assert run.cancel() == "requested"
    details = run.wait_for_completion(timeout=60, raise_on_error=False)
    assert details["status"] == "Canceled"
    recs = records(ws, run)
    assert len(recs) == 2 and all(r.status.value == "Canceled" for r in recs)
    assert all(stamp(r, "Canceled") - stamp(r, "Running") < 30 for r in recs)  # they would sleep 60 s
    # the ended sweep leaves the driver's active set: no controller tick samples for it again
    wait_until(lambda: not ws.redis.sismember(sweep_state.RK_ACTIVE, run.id)
               and not ws.store.exists(sweep_state.ACTIVE_SWEEPS + run.id), 30, "the sweep unregistered")
    assert len(run.get_children()) == 2
    assert run.cancel() == "Canceled"
    # nothing completed: among completed children nothing is ranked (by default, as in Azure, canceled children
    # that logged the metric count)
    assert run.get_best_run_by_primary_metric(include_canceled=False) is None


def _cli(argv: list[str]) -> int:
    """`cluster sweep ...` through the sweep group's own parser (the same register() the CLI uses)."""
    import argparse

    from cluster.cli import sweep as sweep_cli

    parser = argparse.ArgumentParser(prog="cluster")
    sweep_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_cli_submit_show_list_cancel(ws: Workspace, source: Path, pool: NodePool, cluster_dir: Path,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CLUSTER_CONFIG", str(cluster_dir / "config.json"))
    monkeypatch.chdir(tmp_path)
    experiment = unique("sweep-cli")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"""
experiment: {experiment}
source_directory: {source}
entry_script: train.py
script_params: {{"--sleep": 0.1}}
compute_target: {pool.name}
search_space:
  "--a": [1, 2]
  "--b": "choice(5)"
sampling: grid
policy: {{type: median_stopping, evaluation_interval: 1}}
primary_metric_name: score
primary_metric_goal: minimize
max_total_runs: 4
""")
    assert _cli(["sweep", "submit", str(spec), "--wait"]) == 0
    out = capsys.readouterr().out
    sweep_id = out.splitlines()[0].strip()
    assert "Execution summary" in out and "Status: Completed" in out
    run = HyperDriveRun.from_id(ws, sweep_id)
    assert run.experiment.name == experiment and len(run.get_children()) == 2

    assert _cli(["sweep", "show", sweep_id]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("RANK"))
    assert "SCORE" in header and "DURATION" in header and "--a" in header and "--b" in header
    rows = [line.split() for line in lines[lines.index(header) + 1:]]
    assert [r[0] for r in rows] == ["1", "2"] and [r[3] for r in rows] == ["5", "10"]  # minimize: 1*5 first
    assert (tmp_path / f"{sweep_id}.png").read_bytes()[:4] == b"\x89PNG"

    assert _cli(["sweep", "show", sweep_id, "--json", "--plot", str(tmp_path / "p.png")]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["best"]["value"] == 5.0 and shown["status"] == "Completed"
    assert (tmp_path / "p.png").exists()

    assert _cli(["sweep", "list", "--experiment", experiment]) == 0
    out = capsys.readouterr().out
    assert sweep_id in out and "2/2" in out

    assert _cli(["sweep", "cancel", sweep_id]) == 0
    assert "already Completed" in capsys.readouterr().out


def _kill_controller(cluster_dir: Path) -> None:
    ctl = next(p for p in embedded.State.load(cluster_dir).processes if p.name == "controller" and p.alive)
    os.kill(ctl.pid, signal.SIGKILL)
    wait_until(lambda: not ctl.alive, 10, "controller killed")
    embedded.reap(ctl.pid, timeout=10)


def _restart_controller(ws: Workspace, cluster_dir: Path) -> None:
    ws.redis.delete(CONTROLLER_LEADER)  # the dead leader's lease would only delay the takeover
    assert embedded.ensure_controller(cluster_dir)


def test_controller_restart_mid_sweep_resumes_without_duplicates(ws: Workspace, source: Path, pool: NodePool,
                                                                 cluster_dir: Path) -> None:
    sampling = RandomParameterSampling({"--a": uniform(0, 1)}, seed=5)
    hd = HyperDriveConfig(estimator=estimator(source, pool, **{"--sleep": 1.0}), hyperparameter_sampling=sampling,
                          primary_metric_name="score", primary_metric_goal="maximize", max_total_runs=5,
                          max_concurrent_runs=2)
    run = Experiment(ws, unique("sweep-restart")).submit(hd)
    try:
        wait_until(lambda: len(run.get_children()) >= 1, 60, "the first child")
        _kill_controller(cluster_dir)  # SIGKILL, wherever it was in its step
        time.sleep(1.0)
        _restart_controller(ws, cluster_dir)
        wait_until(lambda: len(run.get_children()) >= 3, 90, "a third child")
        _kill_controller(cluster_dir)
        _restart_controller(ws, cluster_dir)
        # Redis forgets which sweeps are active: the driver rebuilds that from the object store
        ws.redis.delete(sweep_state.RK_ACTIVE, sweep_state.RK_SYNCED)
        assert run.wait_for_completion(timeout=120)["status"] == "Completed"
    finally:
        with contextlib.suppress(Exception):
            embedded.ensure_controller(cluster_dir)

    recs = records(ws, run)
    indices = [int(r.tags["sweep_index"]) for r in recs]
    assert len(recs) == 5 and sorted(indices) == list(range(5))  # no duplicate child, none missing
    assert all(r.status.value == "Completed" and r.attempt == 1 for r in recs)
    # the children ran exactly the seeded sequence: nothing was re-sampled after the restarts
    expected = sampling.next_samples([], 5)
    by_index = {int(r.tags["sweep_index"]): r for r in recs}
    assert [float(by_index[i].arguments[-1]) for i in range(5)] == pytest.approx([e["--a"] for e in expected])
    assert len(ws.store.list_dirs(run.prefix + "children/")) == 5
    assert len(ws.store.list(run.prefix + "intents/")) == 5
    assert peak_overlap([(stamp(r, "Queued"), stamp(r, "Completed")) for r in recs]) <= 2
    best = run.get_best_run_by_primary_metric()
    assert best is not None and best.get_metrics()["score"] == pytest.approx(max(e["--a"] for e in expected))
    assert not ws.redis.sismember(sweep_state.RK_ACTIVE, run.id)
    assert not ws.store.exists(sweep_state.ACTIVE_SWEEPS + run.id)
    assert Run(run.experiment, run.id).get_status() == "Completed"  # the parent is an ordinary run record too
