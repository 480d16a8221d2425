"""Autoscaled pools against the real embedded cluster: the controller starts and drains real node processes."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from cluster import ComputeTarget, Estimator, Experiment, NodePool, Workspace, embedded, layout
from cluster.errors import ConflictError, UsageError
from tests.helpers import marker_server, wait_until

pytestmark = pytest.mark.integration

WORK = """
import argparse, os, sys, time, urllib.request, uuid
p = argparse.ArgumentParser()
p.add_argument("--seconds", type=float, default=1.0)
p.add_argument("--marker", default="")
a = p.parse_args()
os.makedirs("outputs", exist_ok=True)
token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"  # unique per execution (in a pid namespace every pid is 2)
with open("outputs/pid.txt", "w") as f:
    f.write(token)
def mark(name, line):  # to the test's marker server: a sandboxed run sees none of the test's files
    urllib.request.urlopen(a.marker + name, data=line.encode(), timeout=10).read()
if a.marker:
    mark("events.txt", f"start {os.environ['CLUSTER_RUN_ID']} {token}\\n")
print("started", os.getpid(), flush=True)
deadline = time.time() + a.seconds
while time.time() < deadline:
    time.sleep(0.05)
if a.marker:
    mark("done.txt", os.environ["CLUSTER_RUN_ID"] + "\\n")
print("done", flush=True)
"""




@pytest.fixture
def ws(cluster_dir: Path) -> Workspace:
    return Workspace.from_config(cluster_dir / "config.json")


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[str]:
    """Where a run reports what it did (files in tmp_path, written through HTTP: see marker_server)."""
    with marker_server(tmp_path) as url:
        yield url


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "work.py").write_text(WORK)
    return src


@pytest.fixture
def make_pool(ws: Workspace, request: pytest.FixtureRequest) -> Iterator[Callable[..., NodePool]]:
    created: list[NodePool] = []

    def make(**kw: object) -> NodePool:
        name = f"p{abs(hash(request.node.name)) % 10**6}{len(created)}"
        cfg = NodePool.provisioning_configuration(**{"vm_size": "small", "min_nodes": 0, "max_nodes": 2,
                                                     "idle_seconds_before_scaledown": 1, **kw})
        pool = ComputeTarget.create(ws, name, cfg)
        pool.wait_for_completion(timeout_in_minutes=1)
        created.append(pool)
        return pool

    yield make
    for pool in created:
        pool.delete()
    for pool in created:
        wait_until(lambda p=pool: p.name not in ws.compute_targets and not _nodes(ws, p.name), 60,
                   f"pool {pool.name} deleted and drained")


def _nodes(ws: Workspace, pool: str) -> dict[str, dict[str, str]]:
    out = {}
    for name in ws.redis.smembers(layout.RK_NODES):
        h = ws.redis.hgetall(layout.rk_node(name))
        if h.get("pool") == pool:
            out[name] = h
    return out


def _submit(ws: Workspace, source: Path, pool: NodePool, seconds: float, marker: str | None = None,
            experiment: str = "pools") -> object:
    params: dict[str, object] = {"--seconds": seconds}
    if marker is not None:
        params["--marker"] = marker
    est = Estimator(source_directory=source, entry_script="work.py", script_params=params, compute_target=pool)
    return Experiment(ws, experiment).submit(est)


def _kill_node_tree(cluster_dir: Path, node: str) -> int:
    """Simulate losing the machine: SIGKILL the node process and everything under it."""
    mp = next(p for p in embedded.State.load(cluster_dir).processes if p.name == node)
    proc = psutil.Process(mp.pid)
    victims = [proc, *proc.children(recursive=True)]
    for v in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            v.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=5)
    embedded.reap(mp.pid, timeout=10)
    return mp.pid


def test_api_and_validation(ws: Workspace, make_pool: Callable[..., NodePool]) -> None:
    pool = make_pool(max_nodes=3)
    assert pool.name in ws.compute_targets
    status = ws.compute_targets[pool.name].status.serialize()
    assert status["scaleSettings"] == {"minNodeCount": 0, "maxNodeCount": 3, "idleSecondsBeforeScaledown": 1}
    assert "reason" in status["decision"]
    with pytest.raises(ConflictError):
        ComputeTarget.create(ws, pool.name, NodePool.provisioning_configuration())
    with pytest.raises(UsageError):
        NodePool.provisioning_configuration(min_nodes=3, max_nodes=2)
    with pytest.raises(UsageError):
        NodePool.provisioning_configuration(vm_size="enormous")
    pool.update(max_nodes=2)
    assert ws.compute_targets[pool.name].max_nodes == 2


def test_scales_zero_to_two_to_zero(ws: Workspace, source: Path, make_pool: Callable[..., NodePool]) -> None:
    pool = make_pool(max_nodes=2, idle_seconds_before_scaledown=1)
    assert _nodes(ws, pool.name) == {}
    runs = [_submit(ws, source, pool, 2.0) for _ in range(2)]
    wait_until(lambda: sum(h.get("state") == "busy" for h in _nodes(ws, pool.name).values()) == 2, 60,
               "two busy nodes")
    for run in runs:
        assert run.wait_for_completion(timeout=60)["status"] == "Completed"
    wait_until(lambda: not _nodes(ws, pool.name), 30, "scale back to zero")
    events = pool.events()
    assert sum(e.get("start", 0) for e in events) == 2  # one tick may see one run queued, the next the other
    assert sum(len(e.get("drain", [])) for e in events) == 2
    assert {run.get_details()["node"] for run in runs}.__len__() == 2


def test_busy_node_is_never_scaled_away(ws: Workspace, source: Path, make_pool: Callable[..., NodePool]) -> None:
    pool = make_pool(max_nodes=2, idle_seconds_before_scaledown=0.5)
    long_run = _submit(ws, source, pool, 6.0)
    short_run = _submit(ws, source, pool, 0.5)
    short_run.wait_for_completion(timeout=60)
    # the short run's node idles and is drained while the long run keeps its node
    wait_until(lambda: len(_nodes(ws, pool.name)) == 1, 30, "idle node drained")
    details = long_run.wait_for_completion(timeout=60)
    assert details["status"] == "Completed" and details["attempt"] == 1


def test_sigkill_of_busy_node_reruns_elsewhere(ws: Workspace, cluster_dir: Path, source: Path,
                                               make_pool: Callable[..., NodePool], tmp_path: Path,
                                               marker: str) -> None:
    pool = make_pool(max_nodes=2)
    run = _submit(ws, source, pool, 4.0, marker=marker)
    wait_until(lambda: run.get_status() == "Running", 60, "run started")
    first = run.get_details()
    _kill_node_tree(cluster_dir, first["node"])
    details = run.wait_for_completion(timeout=90)
    assert details["status"] == "Completed"
    assert details["attempt"] == 2 and details["node"] != first["node"]
    assert [a.get("outcome") for a in details["attempts"]] == ["node-lost", "Completed"]
    assert (tmp_path / "done.txt").read_text().split() == [run.id]  # executed to the end exactly once
    pid_file = run.download_file("outputs/pid.txt", tmp_path / "pid.txt")
    starts = [line.split()[2] for line in (tmp_path / "events.txt").read_text().splitlines()]
    assert Path(pid_file).read_text() == starts[-1]  # the outputs are the completing execution's
    assert len(starts) <= 2


def test_controller_restart_mid_run_loses_nothing(ws: Workspace, cluster_dir: Path, source: Path,
                                                  make_pool: Callable[..., NodePool]) -> None:
    pool = make_pool(max_nodes=1)
    run = _submit(ws, source, pool, 4.0)
    wait_until(lambda: run.get_status() == "Running", 60, "run started")
    ctl = embedded.running_process(cluster_dir, "controller")
    assert ctl is not None
    os.kill(ctl.pid, signal.SIGKILL)
    embedded.reap(ctl.pid, timeout=10)
    queued_while_down = _submit(ws, source, pool, 0.2)
    time.sleep(1.0)
    ws.redis.delete("cluster:controller:leader")  # the dead leader's lease would otherwise delay takeover
    assert embedded.ensure_controller(cluster_dir)
    details = run.wait_for_completion(timeout=60)
    assert details["status"] == "Completed" and details["attempt"] == 1
    assert queued_while_down.wait_for_completion(timeout=60)["status"] == "Completed"


def test_max_nodes_never_exceeded_under_burst(ws: Workspace, source: Path, make_pool: Callable[..., NodePool]) -> None:
    pool = make_pool(max_nodes=3, idle_seconds_before_scaledown=1)
    runs = [_submit(ws, source, pool, 0.3) for _ in range(20)]
    peak = 0
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        peak = max(peak, len(_nodes(ws, pool.name)))
        status = pool.status.serialize()
        peak = max(peak, sum(status.get("nodes", {}).get(s, 0) for s in ("starting", "idle", "busy", "draining")))
        if all(ws.runs.status(r.id).is_final for r in runs):
            break
        time.sleep(0.1)
    assert [r.get_status() for r in runs] == ["Completed"] * 20
    assert 1 <= peak <= 3


def test_redis_wiped_runs_are_requeued_from_the_object_store(ws: Workspace, source: Path,
                                                              make_pool: Callable[..., NodePool]) -> None:
    pool = make_pool(max_nodes=1, idle_seconds_before_scaledown=30)
    running = _submit(ws, source, pool, 4.0)
    wait_until(lambda: running.get_status() == "Running", 60, "first run started")
    queued = _submit(ws, source, pool, 0.2)
    assert queued.get_status() == "Queued"
    ws.redis.flushall()  # queue, live state, leases, heartbeats: all gone
    for run in (running, queued):
        details = run.wait_for_completion(timeout=120)
        assert details["status"] == "Completed"
    assert running.get_details()["attempt"] == 2  # its interrupted attempt was recorded as node-lost
    assert [a.get("outcome") for a in running.get_details()["attempts"]] == ["node-lost", "Completed"]


def test_cancel_requested_then_node_lost_is_not_run_again(ws: Workspace, cluster_dir: Path, source: Path,
                                                          make_pool: Callable[..., NodePool]) -> None:
    pool = make_pool(max_nodes=1)
    run = _submit(ws, source, pool, 30.0)
    wait_until(lambda: run.get_status() == "Running", 60, "run started")
    ctl = embedded.running_process(cluster_dir, "controller")
    assert ctl is not None
    controller = psutil.Process(ctl.pid)
    controller.suspend()  # so the node's loss and the cancel are both seen in one controller tick
    try:
        _kill_node_tree(cluster_dir, run.get_details()["node"])
        assert run.cancel() == "requested"  # the node is gone: nobody acts on it but the controller
    finally:
        controller.resume()
    details = run.wait_for_completion(timeout=60)
    assert details["status"] == "Canceled" and details["attempt"] == 1
