"""Redis is not the record: after a FLUSHALL every finished run is still whole, and the cluster keeps working.

This module wipes Redis, so it runs on a cluster of its own (``own_cluster_dir``): the session's cluster, which
every other module shares, is never wiped under their feet.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cluster import Experiment, Run, ScriptRunConfig, Workspace, layout
from cluster.settings import Settings
from tests.helpers import unique, use_own_cluster, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("node")]

cluster_dir, settings = use_own_cluster()


@pytest.fixture(scope="module")
def ws(settings: Settings) -> Workspace:
    return Workspace(settings)


def finish(run: Run) -> dict:
    return run.wait_for_completion(timeout=120, raise_on_error=False)


def test_everything_survives_a_redis_flushall(ws: Workspace, pool: str, make_source: Callable[..., Path],
                                              tmp_path: Path) -> None:
    exp = Experiment(ws, unique("flush"))
    src = make_source("""
        import os
        from cluster import Run
        run = Run.get_context()
        run.log("score", 1.5)
        run.log("score", 2.5)
        os.makedirs("outputs", exist_ok=True)
        open("outputs/result.txt", "w").write("kept")
        print("hello from before the flush")
    """)
    config = ScriptRunConfig(src, "train.py", compute_target=pool)
    run = exp.submit(config)
    assert finish(run)["status"] == "Completed"
    before = (run.get_details(), run.get_metrics(), run.get_file_names())

    ws.redis.flushall()

    again = Run(Experiment(ws, exp.name), run.id)
    assert [r.id for r in exp.get_runs()] == [run.id]
    assert again.get_status() == "Completed"
    assert again.get_details() == before[0]
    assert again.get_metrics() == before[1] == {"score": [1.5, 2.5]}
    assert again.get_file_names() == before[2]
    assert again.download_file("outputs/result.txt", tmp_path / "r.txt") and (tmp_path / "r.txt").read_text() == "kept"
    assert "hello from before the flush" in [line for _id, line in again.stream_log()]

    # the cluster keeps working: the node's heartbeat comes back and a new run completes
    wait_until(lambda: ws.redis.keys(layout.rk_node("*")), timeout=30, what="heartbeats after the flush")
    after = exp.submit(config)
    assert finish(after)["status"] == "Completed"
    assert [r.id for r in exp.get_runs()] == [after.id, run.id]
