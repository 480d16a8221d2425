"""Autoscaled pools against the real embedded cluster: the controller starts and drains real node processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from cluster import ComputeTarget, Estimator, Experiment, NodePool, Workspace, embedded, layout
from cluster.errors import ConflictError, UsageError
from tests.helpers import EventCollector, use_own_cluster, wait_until

pytestmark = pytest.mark.integration

# this module wipes Redis and kills nodes and the controller: it runs on a cluster of its own, not the session's
cluster_dir, settings = use_own_cluster()

WORK = """
import argparse, os, sys, time, urllib.request, uuid
p = argparse.ArgumentParser()
p.add_argument("--seconds", type=float, default=1.0)
p.add_argument("--marker", default="")  # the URL of the test's EventCollector
p.add_argument("--barrier", type=int, default=0)  # wait until this many runs started (needs --marker)
a = p.parse_args()
run_id = os.environ["CLUSTER_RUN_ID"]
token = uuid.uuid4().hex  # this execution of the script (pids repeat across sandboxes: each has its own pid 1..)

def event(kind):
    urllib.request.urlopen(f"{a.marker}/{kind}/{run_id}/{token}", data=b"", timeout=30).read()

os.makedirs("outputs", exist_ok=True)
with open("outputs/pid.txt", "w") as f:
    f.write(token)
if a.marker:
    event("start")
print("started", token, flush=True)
barrier_deadline = time.time() + 120
while a.barrier and time.time() < barrier_deadline:
    if int(urllib.request.urlopen(f"{a.marker}/count/start", timeout=30).read()) >= a.barrier:
        break
    time.sleep(0.05)
deadline = time.time() + a.seconds
while time.time() < deadline:
    time.sleep(0.05)
if a.marker:
    event("done")
print("done", flush=True)
"""




@pytest.fixture
def ws(cluster_dir: Path) -> Workspace:
    return Workspace.from_config(cluster_dir / "config.json")


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


def _submit(ws: Workspace, source: Path, pool: NodePool, seconds: float, marker: EventCollector | None = None,
            experiment: str = "pools", barrier: int = 0) -> object:
    params: dict[str, object] = {"--seconds": seconds}
    if marker is not None:
        params["--marker"] = marker.url
    if barrier:
        params["--barrier"] = barrier
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


def test_scales_zero_to_two_to_zero(ws: Workspace, source: Path, make_pool: Callable[..., NodePool],
                                    events: EventCollector) -> None:
    pool = make_pool(max_nodes=2, idle_seconds_before_scaledown=1)
    assert _nodes(ws, pool.name) == {}
    # each run waits until both started: two nodes busy at once however fast or slow each node starts
    runs = [_submit(ws, source, pool, 2.0, marker=events, barrier=2) for _ in range(2)]
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
                                               events: EventCollector) -> None:
    pool = make_pool(max_nodes=2)
    run = _submit(ws, source, pool, 4.0, marker=events)
    wait_until(lambda: events.lines("start"), 60, "the script started")
    first = run.get_details()
    killed_pid = _kill_node_tree(cluster_dir, first["node"])
    details = run.wait_for_completion(timeout=90)
    assert details["status"] == "Completed"
    assert details["attempt"] == 2 and details["node"] != first["node"]
    assert [a.get("outcome") for a in details["attempts"]] == ["node-lost", "Completed"]
    assert [e.split()[1] for e in events.lines("done")] == [run.id]  # executed to the end exactly once
    pid_file = run.download_file("outputs/pid.txt", tmp_path / "pid.txt")
    starts = [e.split() for e in events.lines("start")]
    assert [r for _k, r, _t in starts] == [run.id, run.id]  # the killed attempt and the one that completed
    assert Path(pid_file).read_text() == starts[-1][2]  # outputs from the attempt that completed
    assert killed_pid > 0


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
    ws.redis.delete(layout.RK_CONTROLLER_LEADER)  # the dead leader's lease would otherwise delay takeover
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
    assert {running.id, queued.id} <= set(ws.runs.list_live_run_ids())  # what recovery will read
    ws.redis.flushall()  # queue, live state, leases, heartbeats: all gone
    for run in (running, queued):
        details = run.wait_for_completion(timeout=120)
        assert details["status"] == "Completed"
    assert running.get_details()["attempt"] == 2  # its interrupted attempt was recorded as node-lost
    assert [a.get("outcome") for a in running.get_details()["attempts"]] == ["node-lost", "Completed"]
    # final: the controller drops them from the live index (the next wipe's recovery does not read them)
    wait_until(lambda: not {running.id, queued.id} & set(ws.runs.list_live_run_ids()), 30, "live index pruned")


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


PROBE = """
import json, os, sys, time, urllib.request
events = sys.argv[1]  # the test's EventCollector: both runs wait until both started (on two nodes)
urllib.request.urlopen(f"{events}/start/{os.environ['CLUSTER_RUN_ID']}/0", data=b"", timeout=30).read()
deadline = time.time() + 120
while time.time() < deadline and int(urllib.request.urlopen(f"{events}/count/start", timeout=30).read()) < 2:
    time.sleep(0.05)
os.makedirs("outputs", exist_ok=True)
with open("outputs/probe.json", "w") as f:
    json.dump({"cpus": sorted(os.sched_getaffinity(0)),
               "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                          "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                                                          "NUMEXPR_NUM_THREADS")}}, f)
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to show disjoint sets")
def test_two_small_nodes_get_their_own_cpu_and_thread_counts(ws: Workspace, tmp_path: Path,
                                                            make_pool: Callable[..., NodePool],
                                                            events: EventCollector) -> None:
    src = tmp_path / "probe"
    src.mkdir()
    (src / "probe.py").write_text(PROBE)
    pool = make_pool(max_nodes=2, idle_seconds_before_scaledown=30)
    exp = Experiment(ws, "pools")
    runs = [exp.submit(Estimator(src, "probe.py", compute_target=pool, script_params={events.url: None}))
            for _ in range(2)]
    seen = []
    for run in runs:
        assert run.wait_for_completion(timeout=90)["status"] == "Completed"
        seen.append(json.loads(Path(run.download_file("outputs/probe.json", tmp_path / f"{run.id}.json"))
                               .read_text()))
    assert len({run.get_details()["node"] for run in runs}) == 2
    assert [len(s["cpus"]) for s in seen] == [1, 1]
    assert seen[0]["cpus"] != seen[1]["cpus"]  # two 1-CPU nodes never share a core
    for s in seen:
        assert set(s["threads"].values()) == {"1"}


def test_silent_node_is_removed_and_its_run_restarts_elsewhere(ws: Workspace, cluster_dir: Path, source: Path,
                                                               make_pool: Callable[..., NodePool],
                                                               events: EventCollector) -> None:
    pool = make_pool(max_nodes=2, min_nodes=2, idle_seconds_before_scaledown=30)
    wait_until(lambda: len(_nodes(ws, pool.name)) == 2, 60, "two nodes")
    run = _submit(ws, source, pool, 3.0, marker=events)
    wait_until(lambda: run.get_status() == "Running", 60, "run started")
    first = run.get_details()
    mp = next(p for p in embedded.State.load(cluster_dir).processes if p.name == first["node"])
    stopped = psutil.Process(mp.pid)
    script_pids = [c.pid for c in stopped.children(recursive=True)]
    stopped.send_signal(signal.SIGSTOP)  # silent, not dead: no heartbeat, no lease renewal, process still there
    details = run.wait_for_completion(timeout=90)
    assert details["status"] == "Completed" and details["node"] != first["node"]
    assert [a.get("outcome") for a in details["attempts"]] == ["node-lost", "Completed"]
    # the controller removed the silent node and the script it had started (a stopped process ignores SIGTERM)
    wait_until(lambda: not psutil.pid_exists(mp.pid) or psutil.Process(mp.pid).status() == psutil.STATUS_ZOMBIE,
               30, "the silent node removed")
    for pid in script_pids:
        wait_until(lambda p=pid: not psutil.pid_exists(p) or psutil.Process(p).status() == psutil.STATUS_ZOMBIE,
                   30, "its script removed")


def _spares(cluster_dir: Path) -> dict[int, str]:
    return {p.pid: p.name for p in embedded.State.load(cluster_dir).processes
            if p.name.startswith("spare-") and p.alive}


def test_first_node_of_a_cold_pool_is_a_warm_spare(ws: Workspace, cluster_dir: Path, source: Path,
                                                   make_pool: Callable[..., NodePool]) -> None:
    wait_until(lambda: len(_spares(cluster_dir)) == 1, 60, "the controller's warm spare")
    before = _spares(cluster_dir)
    pool = make_pool(max_nodes=1, idle_seconds_before_scaledown=1)
    run = _submit(ws, source, pool, 0.5)
    assert run.wait_for_completion(timeout=60)["status"] == "Completed"
    node = run.get_details()["node"]
    record = next(p for p in embedded.State.load(cluster_dir).processes if p.name == node)
    assert record.pid in before  # the spare became the node: same process, recorded under the node's name
    assert "--managed" in record.argv and "--pool" in record.argv
    wait_until(lambda: len(_spares(cluster_dir)) == 1 and set(_spares(cluster_dir)) != set(before), 60,
               "a new spare in its place")
