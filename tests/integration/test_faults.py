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
