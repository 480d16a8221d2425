"""Storage and partition faults against real servers and real node processes.

Each scenario injects a fault with signals (SIGSTOP = a server or node that stops answering without its
connections being closed, as in a network partition), lets it last, removes it, and then checks what the issue
asks: every run ends Completed exactly once (one final record, outputs of one attempt, the script executed
once unless a node was cut off mid-script), or with a documented cause; a stale node writes nothing.
A summary line per scenario is printed (`pytest -s` shows it).
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from cluster import Estimator, Experiment, Workspace, embedded, layout
from cluster.compute import rk_pool_events
from tests.helpers import EventCollector, wait_until
from tests.integration.conftest import NodeStarter

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAULT_SECONDS = 20.0  # how long a fault lasts (the fault, not a synchronisation)
LEASE_SECONDS = 10.0

SCRIPT = """
import argparse, json, os, time, urllib.request, uuid
from cluster import Run
p = argparse.ArgumentParser()
p.add_argument("--events")
p.add_argument("--seconds", type=float, default=1.0)
a = p.parse_args()
token = uuid.uuid4().hex
def event(kind):
    urllib.request.urlopen(f"{a.events}/{kind}/{os.environ['CLUSTER_RUN_ID']}/{token}", data=b"", timeout=60).read()
event("start")
run = Run.get_context()
os.makedirs("outputs", exist_ok=True)
with open("outputs/result.json", "w") as f:
    json.dump({"token": token}, f)
run.log("step", 1)
print("READY", flush=True)
time.sleep(a.seconds)
run.log("step", 2)
event("done")
print("END", flush=True)
"""


@pytest.fixture
def ws(cluster_dir: Path) -> Workspace:
    return Workspace.from_config(cluster_dir / "config.json")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "work.py").write_text(SCRIPT)
    return src


@contextlib.contextmanager
def stopped(proc: psutil.Process) -> Iterator[None]:
    """The process stops answering (SIGSTOP) until the block ends (SIGCONT), even if the test fails."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGCONT)


def service(cluster_dir: Path, name: str) -> psutil.Process:
    mp = embedded.running_process(cluster_dir, name)
    assert mp is not None, f"no {name} process"
    return psutil.Process(mp.pid)


def wait_line(run: object, text: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    for _id, line in run.stream_log(poll_ms=100, deadline=deadline):  # type: ignore[attr-defined]
        if line.strip() == text:
            return
    pytest.fail(f"no {text!r} line from the run within {timeout}s")


def check_once(ws: Workspace, run: object, events: EventCollector, tmp_path: Path, *,
               scenario: str, executions_allowed: int = 1) -> dict[str, object]:
    """The run Completed once: one final record, outputs and metrics of the attempt that completed."""
    details = run.wait_for_completion(timeout=300)  # type: ignore[attr-defined]
    run_id = run.id  # type: ignore[attr-defined]
    starts = [e.split()[2] for e in events.lines("start") if e.split()[1] == run_id]
    outcomes = [a.get("outcome") for a in details["attempts"]]
    result = json.loads(Path(run.download_file("outputs/result.json", tmp_path / f"{run_id}.json"))  # type: ignore[attr-defined]
                        .read_text())
    metrics = run.get_metrics()  # type: ignore[attr-defined]
    duplicated = max(0, len(starts) - executions_allowed)
    wrong_cause = int(details["status"] != "Completed")
    print(f"\nfault scenario {scenario!r}: runs 1, completed {int(details['status'] == 'Completed')}, lost 0, "
          f"duplicated {duplicated}, wrong cause {wrong_cause}; attempts {outcomes}")
    assert details["status"] == "Completed", details.get("error")
    assert outcomes[-1] == "Completed" and outcomes.count("Completed") == 1
    assert 1 <= len(starts) <= executions_allowed, starts
    assert result["token"] == starts[-1]  # the outputs are the completing attempt's
    assert metrics["step"] == [1, 2]  # one attempt's metrics, complete
    return details


def test_object_store_stopped_during_finalization(ws: Workspace, cluster_dir: Path, nodes: NodeStarter,
                                                  pool: str, source: Path, events: EventCollector,
                                                  tmp_path: Path) -> None:
    nodes.start(pool)
    run = Experiment(ws, "faults").submit(Estimator(source, "work.py", compute_target=pool,
                                                    script_params={"--events": events.url, "--seconds": 1.0}))
    wait_line(run, "READY")
    with stopped(service(cluster_dir, "s3")):  # the script ends and the node finalizes while S3 is silent
        time.sleep(FAULT_SECONDS)
    details = check_once(ws, run, events, tmp_path, scenario="S3 stopped during finalization")
    assert details["attempt"] == 1  # a storage blip costs a delay, never a re-run


def test_object_store_stopped_during_the_script(ws: Workspace, cluster_dir: Path, nodes: NodeStarter,
                                                pool: str, source: Path, events: EventCollector,
                                                tmp_path: Path) -> None:
    nodes.start(pool)
    run = Experiment(ws, "faults").submit(Estimator(source, "work.py", compute_target=pool,
                                                    script_params={"--events": events.url, "--seconds": 8.0}))
    wait_line(run, "READY")
    with stopped(service(cluster_dir, "s3")):
        time.sleep(FAULT_SECONDS)
    details = check_once(ws, run, events, tmp_path, scenario="S3 stopped during the script")
    assert details["attempt"] == 1


def test_partitioned_node_writes_nothing_after_it_comes_back(ws: Workspace, nodes: NodeStarter, source: Path,
                                                             events: EventCollector, tmp_path: Path) -> None:
    from tests.helpers import unique

    pool = unique("part")
    first = nodes.start(pool)
    run = Experiment(ws, "faults").submit(Estimator(source, "work.py", compute_target=pool,
                                                    script_params={"--events": events.url, "--seconds": 6.0}))
    wait_line(run, "READY")
    assert run.get_details()["node"] == first.name
    node_proc = psutil.Process(first.proc.pid)
    cut = time.monotonic()
    with stopped(node_proc):  # cut off: no heartbeat, no lease renewal, for twice the lease period (or more)
        nodes.start(pool)  # another node to take the run over
        details = run.wait_for_completion(timeout=120)
        assert details["status"] == "Completed" and details["node"] != first.name
        time.sleep(max(0.0, cut + 2 * LEASE_SECONDS - time.monotonic()))
        before = _visible_state(ws, run.id, run)
    # back: the stale attempt finds its lease gone and stops; nothing it does reaches the run
    wait_until(lambda: ws.redis.hget(layout.rk_node(first.name), "state") == "idle", 60, "the old node idle again")
    time.sleep(2)  # let any stray write of the old attempt land (there must be none)
    assert _visible_state(ws, run.id, run) == before
    # the old attempt's script was executed (it was cut off mid-script) and the completing one ran elsewhere
    check_once(ws, run, events, tmp_path, scenario="node partitioned for 2x the lease", executions_allowed=2)
    log = first.log_text()
    assert "Traceback" not in log, log[-2000:]


def _visible_state(ws: Workspace, run_id: str, run: object) -> tuple[object, ...]:
    prefix = ws.runs.prefix(run_id)
    visible = run.files_prefix()  # type: ignore[attr-defined]
    # what a reader sees: the record and the committed attempt's files (a stale attempt may only ever write
    # into its own attempts/<n>/ folder, which nothing reads)
    files = sorted((o.key, o.etag) for o in ws.store.list(prefix)
                   if not o.key.startswith(prefix + "attempts/") or o.key.startswith(visible))
    stream = ws.redis.xrange(layout.rk_run_log(run_id)) if ws.redis.exists(layout.rk_run_log(run_id)) else []
    return (json.dumps(run.get_details(), sort_keys=True), files, len(stream),  # type: ignore[attr-defined]
            json.dumps(run.get_metrics(), sort_keys=True))  # type: ignore[attr-defined]


def test_queued_run_whose_message_was_lost_is_queued_again(ws: Workspace, nodes: NodeStarter, source: Path,
                                                           events: EventCollector, tmp_path: Path) -> None:
    from tests.helpers import unique

    pool = unique("lostmsg")
    run = Experiment(ws, "faults").submit(Estimator(source, "work.py", compute_target=pool,
                                                    script_params={"--events": events.url, "--seconds": 0.1}))
    assert ws.redis.delete(layout.queue_name(pool)) == 1  # the broker lost the message; the run is Queued
    assert run.get_status() == "Queued"
    nodes.start(pool)  # a node serves the pool, the controller sees it, finds the run stranded twice, queues it
    check_once(ws, run, events, tmp_path, scenario="message lost from the broker")
    assert any("queued again" in e.get("reason", "") for e in
               (json.loads(x) for x in ws.redis.lrange(rk_pool_events(pool), 0, -1)))


def test_node_stopped_mid_run_hands_the_run_back(ws: Workspace, nodes: NodeStarter, source: Path,
                                                 events: EventCollector, tmp_path: Path) -> None:
    """SIGTERM (an eviction, a host shutdown): the script gets a grace period, is stopped, the attempt is
    recorded as node-stopped and another node runs the run; the stopped node leaves no process behind."""
    from tests.helpers import unique

    pool = unique("stop")
    first = nodes.start(pool)
    run = Experiment(ws, "faults").submit(Estimator(source, "work.py", compute_target=pool,
                                                    script_params={"--events": events.url, "--seconds": 20.0}))
    wait_line(run, "READY")
    tree = [psutil.Process(first.proc.pid), *psutil.Process(first.proc.pid).children(recursive=True)]
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(60)  # grace for the script, then stopped, handed back, and the node exits
    gone = psutil.wait_procs(tree, timeout=10)[1]
    assert not gone, f"processes left behind: {gone}"
    wait_until(lambda: run.get_status() == "Queued", 30, "the run back in the queue")
    nodes.start(pool)
    details = check_once(ws, run, events, tmp_path, scenario="node stopped (SIGTERM) mid-run", executions_allowed=2)
    assert [a.get("outcome") for a in details["attempts"]] == ["node-stopped", "Completed"]


def _submit(ws: Workspace, source: Path, pool: str, events: EventCollector, seconds: float, count: int = 1,
            script: str = "work.py") -> list[object]:
    exp = Experiment(ws, "faults")
    return [exp.submit(Estimator(source, script, compute_target=pool,
                                 script_params={"--events": events.url, "--seconds": seconds}))
            for _ in range(count)]


def check_batch(ws: Workspace, runs: list[object], events: EventCollector, tmp_path: Path, *, scenario: str,
                executions_allowed: int = 1) -> list[dict[str, object]]:
    """Every run of the batch Completed exactly once (see check_once); one summary line for the scenario."""
    done, failures = [], []
    for run in runs:
        try:
            done.append(check_once(ws, run, events, tmp_path, scenario=f"{scenario} / {run.id}",  # type: ignore[attr-defined]
                                   executions_allowed=executions_allowed))
        except AssertionError as e:
            failures.append(f"{run.id}: {e}")  # type: ignore[attr-defined]
    print(f"\nfault scenario {scenario!r}: runs {len(runs)}, completed {len(done)}, lost 0, "
          f"duplicated/wrong cause {len(failures)}")
    assert not failures, failures
    return done


@pytest.mark.parametrize("fault", ["stopped", "killed"])
def test_object_store_down_during_claim(ws: Workspace, cluster_dir: Path, nodes: NodeStarter, source: Path,
                                        events: EventCollector, tmp_path: Path, fault: str) -> None:
    """The node takes the run while S3 is silent (SIGSTOP: requests hang) or dead (SIGKILL: refused, until
    `cluster up` brings it back): fetching the snapshot waits, retried under the lease; the run is not failed."""
    from tests.helpers import unique

    pool = unique("claim")
    [run] = _submit(ws, source, pool, events, 0.5)
    s3 = service(cluster_dir, "s3")
    if fault == "stopped":
        with stopped(s3):
            nodes.start(pool)  # claims from Redis at once, then needs the snapshot from the silent S3
            wait_until(lambda: run.get_status() in ("Preparing", "Running"), 30, "run claimed")  # type: ignore[attr-defined]
            time.sleep(FAULT_SECONDS)
    else:
        s3.kill()
        s3.wait(10)
        node = nodes.start(pool)
        wait_until(lambda: run.get_status() in ("Preparing", "Running"), 30, "run claimed")  # type: ignore[attr-defined]
        time.sleep(5)
        embedded.up(cluster_dir, echo=lambda _m: None, ui=False)
    details = check_once(ws, run, events, tmp_path, scenario=f"S3 {fault} during claim")
    assert details["attempt"] == 1
    if fault == "killed":
        assert "storage not answering" in "\n".join(line for _id, line in run.stream_log())  # type: ignore[attr-defined]
        assert node.proc.poll() is None


def test_object_store_killed_and_brought_back_by_up_mid_batch(ws: Workspace, cluster_dir: Path, nodes: NodeStarter,
                                                              source: Path, events: EventCollector,
                                                              tmp_path: Path) -> None:
    """S3 dies (SIGKILL) with runs queued, running and finishing; `cluster up` restarts only it, on the same port
    with the same data; every run completes once."""
    from tests.helpers import unique

    pool = unique("s3kill")
    nodes.start(pool)
    nodes.start(pool)
    runs = []
    for i in range(6):  # six snapshots: a run claimed while S3 is down must fetch its own (retried)
        src = tmp_path / f"src{i}"
        src.mkdir()
        (src / "work.py").write_text(SCRIPT + f"# variant {i}\n")
        runs += _submit(ws, src, pool, events, 3.0)
    wait_until(lambda: sum(r.get_status() == "Running" for r in runs) >= 1, 60, "runs started")  # type: ignore[attr-defined]
    s3 = service(cluster_dir, "s3")
    s3.kill()
    s3.wait(10)
    time.sleep(5)  # down: runs finish their scripts and wait to upload; the next ones wait for their snapshot
    messages: list[str] = []
    embedded.up(cluster_dir, echo=messages.append, ui=False)
    assert any("s3 was down: restarted it on the same port" in m for m in messages), messages
    done = check_batch(ws, runs, events, tmp_path, scenario="S3 killed, brought back by cluster up mid-batch")
    assert all(d["attempt"] == 1 for d in done)


def test_redis_killed_and_restarted_mid_run(ws: Workspace, cluster_dir: Path, nodes: NodeStarter, source: Path,
                                            events: EventCollector, tmp_path: Path) -> None:
    """Redis (the broker and the live state) SIGKILLed mid-run and restarted from its AOF by `cluster up`."""
    from tests.helpers import unique

    pool = unique("rkill")
    nodes.start(pool)
    runs = _submit(ws, source, pool, events, 6.0, count=3)
    wait_line(runs[0], "READY")
    time.sleep(1.5)  # appendfsync everysec: what Redis acknowledged a second ago is on disk
    redis_proc = service(cluster_dir, "redis")
    redis_proc.kill()
    redis_proc.wait(10)
    time.sleep(3)
    messages: list[str] = []
    embedded.up(cluster_dir, echo=messages.append, ui=False)
    assert any("redis was down: restarted it on the same port" in m for m in messages), messages
    check_batch(ws, runs, events, tmp_path, scenario="Redis killed and restarted (AOF) mid-run")


CONTROLLER_DOWN_SECONDS = 60.0


def test_controller_down_for_a_minute(ws: Workspace, cluster_dir: Path, nodes: NodeStarter, source: Path,
                                      events: EventCollector, tmp_path: Path) -> None:
    """Without the controller, a static node still serves its queue (runs finish, others queue); once it is back
    it catches up (the finished runs leave the live index)."""
    from tests.helpers import unique

    pool = unique("noctl")
    nodes.start(pool)
    ctl = service(cluster_dir, "controller")
    ctl.kill()
    ctl.wait(10)
    down_since = time.monotonic()
    try:
        runs = _submit(ws, source, pool, events, 8.0, count=4)  # 4 x 8 s on one node: they queue, then finish
        wait_until(lambda: all(ws.runs.status(r.id).is_final for r in runs), 120,  # type: ignore[attr-defined]
                   "the runs finished without the controller")
        time.sleep(max(0.0, down_since + CONTROLLER_DOWN_SECONDS - time.monotonic()))
    finally:
        embedded.up(cluster_dir, echo=lambda _m: None, ui=False)  # starts the controller again
    check_batch(ws, runs, events, tmp_path, scenario="controller down for 60 s")
    ids = {r.id for r in runs}  # type: ignore[attr-defined]
    wait_until(lambda: not ids & set(ws.runs.list_live_run_ids()), 60, "the controller caught up")


DISK_SCRIPT = """
import argparse, os
p = argparse.ArgumentParser()
p.add_argument("--events")
p.add_argument("--seconds", type=float)
p.add_argument("--mb", type=int, default=64)
a = p.parse_args()
os.makedirs("outputs", exist_ok=True)
with open("outputs/big.bin", "wb") as f:
    for _ in range(a.mb):
        f.write(b"x" * 1024 * 1024)
print("WROTE", flush=True)
"""


def test_disk_full_while_writing_outputs(ws: Workspace, nodes: NodeStarter, source: Path, events: EventCollector,
                                         tmp_path: Path) -> None:
    """The node's disk (a 24 MiB filesystem) runs full while the script writes its outputs: the run Fails with cause
    `disk`, and the node is healthy afterwards (the next run on it completes)."""
    import os
    import subprocess

    from tests.helpers import unique

    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    (source / "disk.py").write_text(DISK_SCRIPT)
    pool, name = unique("disk"), unique("node-disk")
    work = nodes.base / name / "work"
    work.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(work)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        node = nodes.start(pool, name=name)
        [full] = _submit(ws, source, pool, events, 0.0, script="disk.py")
        details = full.wait_for_completion(timeout=120, raise_on_error=False)  # type: ignore[attr-defined]
        error = details["error"] or {}
        print(f"\nfault scenario 'disk full while writing outputs': runs 1, failed {int(details['status'] == 'Failed')}"
              f", cause {error.get('kind')}")
        assert details["status"] == "Failed" and error.get("kind") == "disk", details
        assert "disk ran full" in error.get("message", "")
        [after] = _submit(ws, source, pool, events, 0.1)
        check_once(ws, after, events, tmp_path, scenario="the same node after its disk ran full")
        assert after.get_details()["node"] == name  # type: ignore[attr-defined]
        node.stop()
    finally:
        subprocess.run(["umount", "-l", str(work)], capture_output=True)
