"""Fault-injection soak: node processes SIGKILLed again and again during a batch of runs.

Zero runs lost: every run Completed. Zero duplicated: each run has one final record, its attempt history is
node-lost...node-lost then Completed, no attempt started the script twice, and its outputs come from the
attempt that completed. (A kill that lands after the script's own last line but before the node recorded the
result re-runs the script: side effects outside the run directory are at-least-once, as on any cluster.)
Runs on its own embedded cluster whose controller allows many infrastructure attempts.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import ComputeTarget, Estimator, Experiment, NodePool, Workspace, embedded, layout
from tests.helpers import EventCollector, wait_until
from tests.integration.test_pools import WORK, _kill_node_tree

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 20
RUNS = 40


@pytest.fixture
def soak_cluster(tmp_path: Path, cluster_dir: Path) -> Iterator[Path]:
    state_dir = tmp_path / ".cluster"
    embedded.up(state_dir, echo=lambda _m: None, controller=False)
    embedded.ensure_controller(state_dir, ["--max-infra-attempts", "100"])
    try:
        yield state_dir
    finally:
        embedded.down(state_dir, echo=lambda _m: None)


def test_node_kills_lose_and_duplicate_nothing(soak_cluster: Path, tmp_path: Path) -> None:
    ws = Workspace.from_config(soak_cluster / "config.json")
    src = tmp_path / "src"
    src.mkdir()
    (src / "work.py").write_text(WORK)
    marker = EventCollector()  # sandboxed scripts report over loopback HTTP
    pool = ComputeTarget.create(ws, "soak", NodePool.provisioning_configuration(max_nodes=3,
                                                                               idle_seconds_before_scaledown=30))
    pool.wait_for_completion(timeout_in_minutes=1)
    exp = Experiment(ws, "soak")
    runs = [exp.submit(Estimator(src, "work.py", script_params={"--seconds": 2.5, "--marker": marker.url},
                                 compute_target=pool)) for _ in range(RUNS)]
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 600
    while kills < KILLS and time.monotonic() < deadline:
        busy = [n for n in ws.redis.smembers(layout.RK_NODES)
                if ws.redis.hget(layout.rk_node(n), "state") == "busy"]
        if busy:
            _kill_node_tree(soak_cluster, rng.choice(sorted(busy)))
            kills += 1
            time.sleep(rng.uniform(0.4, 1.0))
        else:
            time.sleep(0.1)
        if all(ws.runs.status(r.id).is_final for r in runs):
            break
    wait_until(lambda: all(ws.runs.status(r.id).is_final for r in runs), 600, "every run final")
    statuses = Counter(r.get_status() for r in runs)
    starts: dict[str, list[str]] = {}
    for line in marker.lines("start"):
        _kind, run_id, pid = line.split()
        starts.setdefault(run_id, []).append(pid)
    attempts = 0
    for r in runs:
        details = r.get_details()
        attempts += details["attempt"]
        outcomes = [a.get("outcome") for a in details["attempts"]]
        assert outcomes == ["node-lost"] * (len(outcomes) - 1) + ["Completed"], (r.id, outcomes)
        assert len(outcomes) == details["attempt"]
        assert len(starts[r.id]) <= details["attempt"], (r.id, starts[r.id])  # no attempt ran it twice
        pid = Path(r.download_file("outputs/pid.txt", tmp_path / f"{r.id}.pid")).read_text()
        assert pid == starts[r.id][-1]  # outputs from the attempt that completed
    print(f"soak: {kills} node kills, {RUNS} runs, {attempts} attempts, statuses {dict(statuses)}")
    assert kills == KILLS, "the batch finished before every kill landed"
    assert statuses == {"Completed": RUNS}
    assert attempts > RUNS  # kills really interrupted runs
