"""The run API without servers (issue 13): the in-script calls on an offline run and on a live context writing to a
channel file, how child runs and run.fail read back from the events, --where / tag filters, the best run with
failed and canceled children, and the checkpoint sync against an in-memory store."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from cluster import metrics, runinfo
from cluster.context import LiveRunContext, OfflineRun, get_context
from cluster.errors import UsageError
from cluster.records import RunStatus
from cluster.sweep.policy import PrimaryMetricGoal
from cluster.sweep.run import HyperDriveRun
from cluster.sweep.state import ChildInfo
from cluster.testing import MemoryObjectStore


def test_live_context_events_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    monkeypatch.chdir(tmp_path)
    channel = tmp_path / "metrics.jsonl"
    ctx = get_context({"CLUSTER_RUN_ID": "exp_1_ab", "CLUSTER_RUN_CHANNEL": str(channel), "CLUSTER_EXPERIMENT": "exp",
                       "CLUSTER_RUN_PARENT_ID": "sweep_1_cd", "CLUSTER_RUN_RESUMED_FROM_ATTEMPT": "2"})
    assert isinstance(ctx, LiveRunContext)
    assert (ctx.id, ctx.experiment.name, ctx.parent.id, ctx.resumed_from_attempt) == ("exp_1_ab", "exp",
                                                                                     "sweep_1_cd", 2)
    assert ctx.checkpoint_dir == tmp_path / "outputs/checkpoints" and ctx.checkpoint_dir.is_dir()
    fig = plt.figure()
    plt.plot([1, 2])
    ctx.log_image("curve", plot=fig)
    (tmp_path / "a.png").write_bytes((tmp_path / "outputs/images/curve.png").read_bytes())
    ctx.log_image("copy of curve", path=tmp_path / "a.png")
    ctx.log_table("t", {"x": [1, 2], "y": [0.5, 0.25]})
    assert ctx.upload_file("notes/n.txt", io.BytesIO(b"hi")) == "outputs/notes/n.txt"
    (tmp_path / "folder" / "sub").mkdir(parents=True)
    (tmp_path / "folder" / "sub" / "f.txt").write_text("f")
    assert ctx.upload_folder("logs/extra", tmp_path / "folder") == ["logs/extra/sub/f.txt"]
    with ctx.child_run("fold-1") as child:
        child.log("acc", 0.9)
    other = ctx.child_run("fold-2")
    other.fail(ValueError("no data"))
    ctx.fail("gave up")
    ctx._channel.close()  # a script's context lives as long as the script; this test ends before
    events = [json.loads(line) for line in channel.read_text().splitlines()]
    values = metrics.aggregate(events)
    assert values == {"curve": "outputs/images/curve.png", "copy of curve": "outputs/images/copy_of_curve.png",
                      "t": {"x": [1, 2], "y": [0.5, 0.25]}}
    assert (tmp_path / "outputs/images/copy_of_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "outputs/notes/n.txt").read_bytes() == b"hi"
    assert (tmp_path / "logs/extra/sub/f.txt").read_text() == "f"
    kids = metrics.children(events)
    assert list(kids) == ["fold-1", "fold-2"]
    assert kids["fold-1"] == {"status": "Completed", "error": None, "metrics": {"acc": 0.9}}
    assert kids["fold-2"]["status"] == "Failed" and kids["fold-2"]["error"] == "no data"
    assert metrics.declared_failure(events) == "gave up"


def test_bad_in_script_calls_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = OfflineRun()
    (tmp_path / "x.txt").write_text("not a png")
    with pytest.raises(UsageError, match="is not a PNG file"):
        run.log_image("x", path=tmp_path / "x.txt")
    with pytest.raises(UsageError, match="exactly one of path= or plot="):
        run.log_image("x")
    with pytest.raises(UsageError, match="same length"):
        run.log_table("t", {"a": [1], "b": [1, 2]})
    with pytest.raises(UsageError, match="may not contain"):
        run.upload_file("../escape.txt", io.BytesIO(b""))
    with pytest.raises(UsageError, match="without '/'"):
        run.child_run("a/b")
    assert run.resumed_from_attempt is None and run.parent is None


def test_declared_failure_is_the_last_word() -> None:
    fail = {"name": "status", "kind": "control", "value": "Failed", "message": "bad"}
    done = {"name": "status", "kind": "control", "value": "Completed"}
    assert metrics.declared_failure([fail, done]) is None
    assert metrics.declared_failure([done, fail]) == "bad"
    assert metrics.declared_failure([{**fail, "child": "c"}]) is None  # a child's failure is the child's


def test_where_and_tag_filters() -> None:
    assert runinfo.parse_where("accuracy>0.9")({"accuracy": [0.5, 0.95]})  # the last value of a series
    assert not runinfo.parse_where("accuracy > 0.9")({"accuracy": 0.9})
    assert runinfo.parse_where("loss<=0.2")({"loss": 0.2})
    assert runinfo.parse_where("model == svm")({"model": "svm"})
    assert not runinfo.parse_where("accuracy>0.9")({})
    assert not runinfo.parse_where("accuracy>0.9")({"accuracy": "high"})
    for bad in ("accuracy", "accuracy>>1", ">0.9", ""):
        with pytest.raises(UsageError, match="cannot read --where"):
            runinfo.parse_where(bad)
    assert runinfo.tag_filter({"team": "vision", "best": None})({"team": "vision", "best": ""})
    assert not runinfo.tag_filter({"team": "vision"})({"team": "nlp"})
    assert runinfo.tag_filter("best")({"best": "x"}) and not runinfo.tag_filter(["best"])({})
    assert runinfo.check_type("hyperdrive") == "sweep" and runinfo.check_type("azureml.scriptrun") == "run"
    with pytest.raises(UsageError, match="unknown run type"):
        runinfo.check_type("pipeline")


class _Sweep(HyperDriveRun):
    """A sweep whose children are given (no servers): what get_best_run_by_primary_metric ranks."""

    def __init__(self, children: list[ChildInfo], goal: PrimaryMetricGoal) -> None:
        from types import SimpleNamespace

        self.experiment = SimpleNamespace(name="e", workspace=None)  # type: ignore[assignment]
        self.id = "sweep_1_aa"
        self._given = children
        self._spec = SimpleNamespace(goal=goal, primary_metric_name="acc")  # type: ignore[assignment]

    def _children(self, *, with_metrics: bool = True) -> list[ChildInfo]:
        return self._given


def test_best_run_counts_failed_and_canceled_children_as_in_azure() -> None:
    kids = [ChildInfo("c_1_aa", 0, {}, RunStatus.COMPLETED, (0.7,)),
            ChildInfo("c_2_aa", 1, {}, RunStatus.CANCELED, (0.9,)),
            ChildInfo("c_3_aa", 2, {}, RunStatus.FAILED, (0.8,)),
            ChildInfo("c_4_aa", 3, {}, RunStatus.COMPLETED, ())]
    sweep = _Sweep(kids, PrimaryMetricGoal.MAXIMIZE)
    best: Any = sweep.get_best_run_by_primary_metric()
    assert best.id == "c_2_aa"
    assert sweep.get_best_run_by_primary_metric(include_canceled=False).id == "c_3_aa"  # type: ignore[union-attr]
    assert sweep.get_best_run_by_primary_metric(include_canceled=False,  # type: ignore[union-attr]
                                                include_failed=False).id == "c_1_aa"
    assert _Sweep(kids, PrimaryMetricGoal.MINIMIZE).get_best_run_by_primary_metric().id == "c_1_aa"  # type: ignore
    assert _Sweep(kids[3:], PrimaryMetricGoal.MAXIMIZE).get_best_run_by_primary_metric() is None
    with pytest.raises(UsageError, match="include_failed must be True or False"):
        sweep.get_best_run_by_primary_metric(include_failed="yes")  # type: ignore[arg-type]


def test_checkpoint_sync_uploads_changes_only_and_restores(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tasks import checkpoints
    from tasks.rundir import OutputCaps

    store = MemoryObjectStore()
    node: Any = SimpleNamespace(store=store)
    run_dir = tmp_path / "run"
    ckpt = run_dir / "outputs" / "checkpoints"
    ckpt.mkdir(parents=True)
    lines: list[str] = []
    fenced = {"lost": False}

    def holds() -> None:
        if fenced["lost"]:
            raise RuntimeError("lease lost")

    sync = checkpoints.CheckpointSync(node, "runs/r/", run_dir, 1, holds=holds, lost=lambda: fenced["lost"],
                                      interval=0, caps=OutputCaps(), log=lines.append)
    (ckpt / "a.bin").write_bytes(b"1")
    (ckpt / "sub").mkdir()
    (ckpt / "sub" / "b.bin").write_bytes(b"2")
    os.symlink("/etc/passwd", ckpt / "link")
    assert sync.sync() == 2
    assert sync.sync() == 0  # nothing changed: nothing uploaded, no new manifest
    tmp = run_dir / "outputs" / "a.tmp"
    tmp.write_bytes(b"11")
    os.replace(tmp, ckpt / "a.bin")  # replaced atomically: a new inode, uploaded again
    (ckpt / "sub" / "b.bin").unlink()
    assert sync.sync() == 1
    assert store.get_bytes("runs/r/checkpoints/a.bin") == b"11"
    assert "runs/r/checkpoints/sub/b.bin" not in store.objects
    assert not any("link" in k for k in store.objects)
    assert store.get_json("runs/r/checkpoints.json")["files"] == {"a.bin": {"size": 2}}
    fenced["lost"] = True
    (ckpt / "c.bin").write_bytes(b"3")
    with sync:  # the final pass after the script: the lease is gone, nothing is written
        pass
    assert "runs/r/checkpoints/c.bin" not in store.objects

    again = tmp_path / "run2"
    assert checkpoints.restore(node, "runs/r/", again, lines.append) == 1
    assert (again / "outputs" / "checkpoints" / "a.bin").read_bytes() == b"11"
    assert checkpoints.script_env(1) == {"CLUSTER_RUN_RESUMED_FROM_ATTEMPT": "1"}
    assert checkpoints.restore(node, "runs/none/", tmp_path / "run3", lines.append) is None


def test_outputs_as_a_link_is_not_followed(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from tasks import checkpoints
    from tasks.rundir import OutputCaps

    store = MemoryObjectStore()
    secret = tmp_path / "secret" / "checkpoints"
    secret.mkdir(parents=True)
    (secret / "key").write_text("node secret")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(tmp_path / "secret", run_dir / "outputs")
    sync = checkpoints.CheckpointSync(SimpleNamespace(store=store), "runs/r/", run_dir, 1,  # type: ignore[arg-type]
                                      holds=lambda: None, lost=lambda: False, interval=0, caps=OutputCaps(),
                                      log=lambda _m: None)
    assert sync.sync() == 0 and store.objects == {}


def test_a_child_runs_metric_is_not_the_sweeps_primary_metric() -> None:
    from cluster.sweep.state import primary_values

    assert primary_values({"name": "accuracy", "kind": "scalar", "value": 0.9}, "accuracy") == [0.9]
    assert primary_values({"name": "accuracy", "kind": "scalar", "value": 0.9, "child": "fold-1"}, "accuracy") == []


def test_git_properties_of_a_source_directory(tmp_path: Path) -> None:
    import subprocess

    src = tmp_path / "repo" / "src"
    src.mkdir(parents=True)
    (src / "train.py").write_text("print(1)\n")
    assert runinfo.git_properties(src) == {}  # not in a repository: no git process at all
    git = ["git", "-C", str(tmp_path / "repo"), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "remote", "add", "origin", "https://user:secret@example.invalid/x.git"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    props = runinfo.git_properties(src)
    assert props["git.dirty"] == "false" and props["git.branch"] == "main" and len(props["git.commit"]) == 40
    assert props["git.repository"] == "https://example.invalid/x.git"  # never the credential
    (tmp_path / "repo" / "elsewhere.txt").write_text("outside the source directory")
    assert runinfo.git_properties(src)["git.dirty"] == "false"
    (src / "train.py").write_text("print(2)\n")
    assert runinfo.git_properties(src)["git.dirty"] == "true"
