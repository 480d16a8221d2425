"""Duplicate delivery: Redis re-delivers an unacknowledged message once its visibility timeout passes
(with a short visibility timeout the node scans for expired messages every second).
The run's lease admits one attempt, so the script still runs exactly once."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import Experiment, ScriptRunConfig, Workspace, layout
from tests.helpers import EventCollector

pytestmark = pytest.mark.integration

SCRIPT = """
import os, sys, time, urllib.request
# report each execution to the test's EventCollector (a sandboxed run cannot write the test's folders)
urllib.request.urlopen(f"{sys.argv[1]}/execution/{os.environ['CLUSTER_RUN_ID']}/{os.getpid()}", data=b"").read()
time.sleep(float(sys.argv[2]))
"""


@pytest.fixture
def two_nodes(cluster_dir: Path, tmp_path: Path) -> Iterator[str]:
    pool = "dupdelivery"
    procs = [subprocess.Popen([sys.executable, "-m", "cluster.cli", "worker", "--pool", pool, "--node-name",
                               f"dup-{i}", "--config", str(cluster_dir / "config.json"),
                               "--work-dir", str(tmp_path / f"w{i}"), "--cache-dir", str(tmp_path / "cache"),
                               "--visibility-timeout", "2"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
    ws = Workspace.from_config(cluster_dir / "config.json")
    deadline = time.monotonic() + 60
    while not all(ws.redis.exists(layout.rk_node(f"dup-{i}")) for i in range(2)):
        assert time.monotonic() < deadline, "nodes did not start"
        time.sleep(0.2)
    try:
        yield pool
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_redelivered_message_does_not_run_twice(cluster_dir: Path, two_nodes: str, tmp_path: Path) -> None:
    ws = Workspace.from_config(cluster_dir / "config.json")
    src = tmp_path / "src"
    src.mkdir()
    (src / "slow.py").write_text(SCRIPT)
    marker = EventCollector()
    try:
        run = Experiment(ws, "fencing").submit(ScriptRunConfig(src, "slow.py", arguments=[marker.url, 8],
                                                               compute_target=two_nodes))
        details = run.wait_for_completion(timeout=120)
        deliveries = int(ws.redis.hget(layout.rk_run(run.id), "deliveries") or 0)
        executions = marker.lines("execution")
    finally:
        marker.close()
    assert details["status"] == "Completed" and details["attempt"] == 1
    assert deliveries >= 2, "the visibility timeout (2 s) should have re-delivered the 8 s run's message"
    assert len(executions) == 1
