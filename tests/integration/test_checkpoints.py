"""Checkpoints survive node loss (issue 13): a run's ./outputs/checkpoints is uploaded while it runs; after its node
is SIGKILLed (machine lost) the retried attempt starts with the last checkpoint restored, and goes on from there.

Real Redis, real S3 server, real node processes, the session's real controller (which notices the lost node and
requeues the run)."""

from __future__ import annotations

import contextlib
import shutil
import signal
from pathlib import Path

import psutil
import pytest

from cluster import Experiment, Run, ScriptRunConfig, Workspace, layout
from tests.helpers import unique, wait_until
from tests.integration.conftest import NodeProcess, NodeStarter

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "checkpoints"


def _kill_machine(node: NodeProcess) -> None:
    """Losing the machine: SIGKILL the node and everything under it (its run's script too)."""
    node.remember_descendants()
    victims = [psutil.Process(node.proc.pid), *node.descendants.values()]
    for v in victims:
        with contextlib.suppress(psutil.Error):
            v.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=10)
    node.proc.wait(10)


def _checkpointed_epoch(ws: Workspace, prefix: str) -> int:
    key = layout.checkpoint_prefix(prefix) + "epoch.txt"
    try:
        return int(ws.store.get_bytes(key).decode() or 0) if ws.store.exists(key) else 0
    except ValueError:
        return 0


def _train_on_a_new_node(ws: Workspace, nodes: NodeStarter, tmp_path: Path, *, checkpoint_seconds: str, epochs: int,
                         epoch_seconds: float) -> tuple[str, NodeProcess, Run]:
    """examples/checkpoints/train_epochs.py submitted to a new pool with one node: (pool, node, run)."""
    pool = unique("ckpt")
    src = tmp_path / "src"
    shutil.copytree(EXAMPLE, src)
    node = nodes.start(pool, extra_args=("--checkpoint-seconds", checkpoint_seconds))
    run = Experiment(ws, unique("checkpoints")).submit(ScriptRunConfig(
        source_directory=src, script="train_epochs.py",
        arguments=["--epochs", epochs, "--epoch-seconds", epoch_seconds], compute_target=pool))
    return pool, node, run


def test_retry_after_node_loss_resumes_from_the_last_checkpoint(ws: Workspace, nodes: NodeStarter,
                                                                 tmp_path: Path) -> None:
    pool, first, run = _train_on_a_new_node(ws, nodes, tmp_path, checkpoint_seconds="0.5", epochs=8,
                                            epoch_seconds=1.5)
    prefix = run.prefix

    # the node uploads while the script runs: wait for the 2nd checkpoint to be in the store, then lose the node
    wait_until(lambda: _checkpointed_epoch(ws, prefix) >= 2, 120, "the second checkpoint uploaded")
    _kill_machine(first)
    saved = _checkpointed_epoch(ws, prefix)
    manifest = ws.store.get_json(layout.checkpoint_manifest_key(prefix))
    assert manifest["attempt"] == 1 and "state.pkl" in manifest["files"]

    nodes.start(pool, extra_args=("--checkpoint-seconds", "0.5"))  # another machine takes the requeued run
    details = run.wait_for_completion(timeout=240)
    assert details["status"] == "Completed"
    attempts = details["attempts"]
    assert [a.get("outcome") for a in attempts] == ["node-lost", "Completed"], attempts

    metrics = run.get_metrics()
    # the retried attempt did not start from zero: it found the checkpoint attempt 1 uploaded and went on after it
    assert metrics["resumed_from_attempt"] == 1
    assert metrics["start_epoch"] >= saved >= 2
    epochs = metrics["epoch"] if isinstance(metrics["epoch"], list) else [metrics["epoch"]]
    assert epochs[0] == metrics["start_epoch"] + 1 and epochs[-1] == 8
    # the final outputs hold the finished checkpoint; the run-level copy is the last one uploaded
    assert "outputs/checkpoints/state.pkl" in run.get_file_names()
    assert _checkpointed_epoch(ws, prefix) == 8
    assert ws.store.get_json(layout.checkpoint_manifest_key(prefix))["attempt"] == 2


def test_first_attempt_is_not_resumed_and_deleted_files_leave_the_store(ws: Workspace, nodes: NodeStarter,
                                                                        make_source: object) -> None:
    pool = unique("ckpt")
    nodes.start(pool, extra_args=("--checkpoint-seconds", "0.3"))
    src = make_source({"train.py": """
        import os, time
        from cluster import Run
        run = Run.get_context()
        run.log("resumed", run.resumed_from_attempt or 0)
        d = run.checkpoint_dir
        (d / "a.txt").write_text("a")
        (d / "b.txt").write_text("b")
        time.sleep(1.5)
        os.remove(d / "a.txt")
        os.symlink("/etc/passwd", d / "link")
        time.sleep(1.0)
    """})  # type: ignore[operator]
    run = Experiment(ws, unique("checkpoints")).submit(ScriptRunConfig(src, "train.py", compute_target=pool))
    assert run.wait_for_completion(timeout=120)["status"] == "Completed"
    assert run.get_metrics()["resumed"] == 0
    base = layout.checkpoint_prefix(run.prefix)
    keys = sorted(o.key[len(base):] for o in ws.store.list(base))
    assert keys == ["b.txt"]  # a.txt was deleted by the script; the link was never followed
    assert ws.store.get_json(layout.checkpoint_manifest_key(run.prefix))["files"] == {"b.txt": {"size": 1}}


def _logged(ws: Workspace, run_id: str, text: str) -> bool:
    return any(text in fields.get("l", "") for _id, fields in ws.redis.xrange(layout.rk_run_log(run_id)))


def test_a_stopping_node_uploads_the_checkpoint_before_handing_the_run_back(ws: Workspace, nodes: NodeStarter,
                                                                           tmp_path: Path) -> None:
    """Periodic uploads off (checkpoint_seconds 0): the only upload is the one when the node is asked to stop
    (SIGTERM: a pod eviction, `cluster down`), after it stopped the script (the script needs longer than the node's
    stop grace of 5 s); the next node resumes from it."""
    pool, first, run = _train_on_a_new_node(ws, nodes, tmp_path, checkpoint_seconds="0", epochs=16,
                                            epoch_seconds=1.0)
    wait_until(lambda: _logged(ws, run.id, "epoch 2:"), 120, "the script past its second epoch")
    assert not ws.store.exists(layout.checkpoint_manifest_key(run.prefix))  # nothing uploaded while it ran
    first.proc.send_signal(signal.SIGTERM)
    first.proc.wait(60)
    manifest = ws.store.get_json(layout.checkpoint_manifest_key(run.prefix))
    assert manifest["attempt"] == 1
    saved = _checkpointed_epoch(ws, run.prefix)
    assert saved >= 2
    nodes.start(pool, extra_args=("--checkpoint-seconds", "0"))
    details = run.wait_for_completion(timeout=240)
    assert [a.get("outcome") for a in details["attempts"]] == ["node-stopped", "Completed"]
    metrics = run.get_metrics()
    assert metrics["resumed_from_attempt"] == 1 and metrics["start_epoch"] == saved
