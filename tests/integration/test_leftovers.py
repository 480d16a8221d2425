"""A starting node cleans up after a node that died on the same machine: its scripts and its run folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cluster import layout
from cluster.workspace import Workspace
from tasks.leftovers import kill_leftover_scripts, remove_stale_run_dirs
from tests.helpers import unique, wait_until

TAG = "t" + "0" * 11  # this cluster's tag in these tests


def _script(run_id: str, token: str, tag: str = TAG) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CLUSTER_RUN_ID": run_id, "CLUSTER_RUN_LEASE": token, "CLUSTER_RUN_CLUSTER": tag}
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], env=env,
                            start_new_session=True)


def test_scripts_of_attempts_that_are_over_are_killed_live_ones_kept(ws: Workspace) -> None:
    dead_run, live_run = unique("dead"), unique("live")
    ws.redis.set(layout.rk_run_lease(live_run), "node-b/1", px=60_000)
    ws.redis.set(layout.rk_run_lease(dead_run), "node-c/2", px=60_000)  # a newer attempt elsewhere holds it
    orphan, live = _script(dead_run, "node-a/1"), _script(live_run, "node-b/1")
    other = _script(unique("other"), "node-x/1", tag="another-cluster")  # no lease here: but not ours to judge
    try:
        notes: list[str] = []
        assert kill_leftover_scripts(ws.redis, TAG, notes.append) >= 1
        wait_until(lambda: orphan.poll() is not None, 10, "the orphan killed")
        assert live.poll() is None, "a live attempt's script was killed"
        assert other.poll() is None, "another cluster's script was killed"
        assert "killed" in notes[0]
    finally:
        for p in (orphan, live, other):
            p.kill()
            p.wait()
        ws.redis.delete(layout.rk_run_lease(live_run), layout.rk_run_lease(dead_run))


def test_run_folders_of_attempts_that_are_over_are_removed(ws: Workspace, tmp_path: Path) -> None:
    live_run, dead_run = unique("live"), unique("dead")
    runs = tmp_path / "runs" / TAG
    for name in (f"{live_run}.3", f"{live_run}.3.channel", f"{dead_run}.1", f"{dead_run}.1.channel"):
        (runs / name / "outputs").mkdir(parents=True)
    (runs / f"{dead_run}.1.driver.log").write_text("old")
    locked = runs / f"{dead_run}.1" / "outputs" / "locked"
    locked.mkdir()
    locked.chmod(0)  # what a hostile run may leave
    ws.redis.set(layout.rk_run_lease(live_run), "node-b/3", px=60_000)
    try:
        other = tmp_path / "runs" / "another-cluster" / f"{dead_run}.1"  # another cluster's: never looked at
        other.mkdir(parents=True)
        assert remove_stale_run_dirs(ws.redis, tmp_path, TAG, lambda _m: None) == 3
        assert other.is_dir()
        assert sorted(p.name for p in runs.iterdir()) == [f"{live_run}.3", f"{live_run}.3.channel"]
    finally:
        ws.redis.delete(layout.rk_run_lease(live_run))
