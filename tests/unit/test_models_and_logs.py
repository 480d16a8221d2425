"""Model versioning and the log follower on in-memory fakes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cluster import Experiment, Model, ScriptRunConfig, layout, logstream
from cluster.errors import NotFoundError
from cluster.records import RunStatus
from cluster.run import Run
from cluster.testing import MemoryObjectStore, play_next_run
from cluster.workspace import Workspace


def _finished_run(ws: Workspace, train_dir: Path, **play: object) -> Run:
    run = Experiment(ws, "models").submit(ScriptRunConfig(train_dir, "train.py", compute_target="cpu"))
    assert play_next_run(ws, "cpu", **play) == run.id  # type: ignore[arg-type]
    assert run.files_prefix() == run.prefix + layout.attempt_dir(1)  # the committed attempt's folder
    return run


# ---- model versioning -----------------------------------------------------------------------------

def test_versions_count_up_per_name_and_copy_the_files(mem_ws: Workspace, store: MemoryObjectStore,
                                                       train_dir: Path, tmp_path: Path) -> None:
    run = _finished_run(mem_ws, train_dir)
    store.put_bytes(run.files_prefix() + "outputs/model.pkl", b"weights-1")
    first = run.register_model("net", "outputs/model.pkl", tags={"k": "v"})
    store.put_bytes(run.files_prefix() + "outputs/model.pkl", b"weights-2")
    second = run.register_model("net", "outputs/model.pkl")
    other = run.register_model("other", "outputs/model.pkl")
    assert (first.version, second.version, other.version) == (1, 2, 1)
    assert Model(mem_ws, "net").version == 2 and Model(mem_ws, "net", version=1).tags == {"k": "v"}
    assert [(m.name, m.version) for m in Model.list(mem_ws)] == [("net", 1), ("net", 2), ("other", 1)]
    assert Path(Model(mem_ws, "net", version=1).download(tmp_path / "v1")).read_bytes() == b"weights-1"
    assert Path(Model(mem_ws, "net").download(tmp_path / "v2")).read_bytes() == b"weights-2"


def test_concurrent_registrations_get_distinct_consecutive_versions(mem_ws: Workspace, store: MemoryObjectStore,
                                                                   train_dir: Path) -> None:
    run = _finished_run(mem_ws, train_dir)
    store.put_bytes(run.files_prefix() + "outputs/m.bin", b"m")
    versions: list[int] = []
    lock = threading.Lock()

    def register() -> None:
        v = run.register_model("race", "outputs/m.bin").version
        with lock:
            versions.append(v)

    threads = [threading.Thread(target=register) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == list(range(1, 9))


def test_the_counter_never_falls_below_the_store_after_a_redis_wipe(mem_ws: Workspace, store: MemoryObjectStore,
                                                                   train_dir: Path) -> None:
    run = _finished_run(mem_ws, train_dir)
    store.put_bytes(run.files_prefix() + "outputs/m.bin", b"m")
    run.register_model("kept", "outputs/m.bin")
    run.register_model("kept", "outputs/m.bin")
    mem_ws.redis.flushall()
    assert run.register_model("kept", "outputs/m.bin").version == 3


def test_a_missing_model_or_file_is_not_found(mem_ws: Workspace, train_dir: Path) -> None:
    run = _finished_run(mem_ws, train_dir)
    with pytest.raises(NotFoundError, match="no model named"):
        Model(mem_ws, "nothing")
    with pytest.raises(NotFoundError, match="has no file or folder"):
        run.register_model("net", "outputs/absent.pkl")


# ---- the log follower -----------------------------------------------------------------------------

def _claimed_run_and_writer(ws: Workspace, train_dir: Path, log_file: Path) -> tuple[Run, logstream.LogWriter]:
    """A run claimed by node n1 (attempt 1) and that attempt's log writer, fenced by the claim's token."""
    run = Experiment(ws, "logs").submit(ScriptRunConfig(train_dir, "train.py", compute_target="cpu"))
    claim = ws.runs.claim(run.id, "n1", 60_000)
    return run, logstream.LogWriter(ws.redis, run.id, log_file, token=claim.token)


def test_a_follower_reads_the_live_log_in_order_and_resumes_where_it_was(mem_ws: Workspace, train_dir: Path,
                                                                        tmp_path: Path) -> None:
    run, writer = _claimed_run_and_writer(mem_ws, train_dir, tmp_path / "driver.log")
    for i in range(1200):  # more than one batch and one XREAD page
        writer.line("stdout", f"line {i}")
    writer.flush()
    seen = []
    deadline = time.monotonic() + 30
    for entry_id, line in run.stream_log(poll_ms=50, deadline=deadline):
        seen.append((entry_id, line))
        if len(seen) == 700:
            break
    resumed = []
    writer.line("stderr", "the end")
    writer.close()  # eof
    for _entry_id, line in run.stream_log(after=seen[-1][0], poll_ms=50, deadline=deadline):
        resumed.append(line)
    lines = [line for _id, line in seen] + resumed
    assert lines == [f"line {i}" for i in range(1200)] + ["the end"]
    assert (tmp_path / "driver.log").read_text().splitlines() == lines


def test_a_fenced_writer_stops_adding_once_another_attempt_holds_the_run(mem_ws: Workspace, train_dir: Path,
                                                                         tmp_path: Path) -> None:
    run, writer = _claimed_run_and_writer(mem_ws, train_dir, tmp_path / "a.log")
    writer.line("stdout", "from the first attempt")
    writer.flush()
    mem_ws.redis.delete(layout.rk_run_lease(run.id))
    assert mem_ws.runs.claim(run.id, "n2", 60_000).attempt == 2
    writer.line("stdout", "too late")
    writer.close()
    assert not writer.enabled
    entries = mem_ws.redis.xrange(layout.rk_run_log(run.id))
    assert [f.get("l") for _id, f in entries] == ["from the first attempt"]


def test_a_final_run_without_a_live_stream_is_read_from_the_archive(mem_ws: Workspace, train_dir: Path) -> None:
    run = _finished_run(mem_ws, train_dir, log_lines=["archived 1", "archived 2"])
    assert mem_ws.runs.status(run.id) is RunStatus.COMPLETED
    lines = [line for _id, line in run.stream_log(poll_ms=10, deadline=time.monotonic() + 30)]
    assert lines == ["archived 1", "archived 2"]


# ---- submit -----------------------------------------------------------------------------------------

def test_submit_leaves_no_temporary_directory_behind(mem_ws: Workspace, train_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    exp = Experiment(mem_ws, "tidy")
    for i in range(3):
        (train_dir / "train.py").write_text(f"print({i})\n")  # a changed folder is packed again
        exp.submit(ScriptRunConfig(train_dir, "train.py", compute_target="cpu"))
    assert len(mem_ws.store.list("snapshots/")) >= 3  # packed and uploaded three times ...
    assert list(tmp.iterdir()) == []  # ... with nothing left in the temporary folder


def test_lines_so_far_are_the_live_stream_until_the_log_is_archived(mem_ws: Workspace, train_dir: Path,
                                                                    tmp_path: Path) -> None:
    run, writer = _claimed_run_and_writer(mem_ws, train_dir, tmp_path / "d.log")
    writer.line("stdout", "live 1")
    writer.close()
    assert logstream.lines_so_far(mem_ws.redis, mem_ws.store, run.id, run.prefix) == ["live 1"]
    mem_ws.store.put_bytes(run.prefix + layout.RUN_DRIVER_LOG, b"archived 1\narchived 2\n")
    assert logstream.lines_so_far(mem_ws.redis, mem_ws.store, run.id, run.prefix) == ["archived 1", "archived 2"]


# ---- child runs read back from the committed attempt ----------------------------------------------

def test_children_of_a_finished_run_come_from_the_committed_attempts_archive(mem_ws: Workspace,
                                                                             store: MemoryObjectStore,
                                                                             train_dir: Path) -> None:
    run = _finished_run(mem_ws, train_dir)  # no live stream: only the archive in the attempt's folder
    events = [{"name": "child", "kind": "control", "value": "fold-1", "t": 1.0},
              {"name": "acc", "kind": "scalar", "value": 0.5, "t": 2.0, "child": "fold-1"},
              {"name": "loss", "kind": "scalar", "value": 0.1, "t": 3.0}]
    store.put_json(run.files_prefix() + layout.RUN_METRICS, {"events": events})
    children = run.get_children()
    assert [(c.name, c.get_status(), c.get_metrics()) for c in children] == [("fold-1", "Completed", {"acc": 0.5})]
    assert run.get_metrics() == {"loss": 0.1}


def test_log_tail_of_a_finished_run_reads_the_committed_attempts_log(mem_ws: Workspace, train_dir: Path) -> None:
    from cluster.widgets import log_tail

    run = _finished_run(mem_ws, train_dir, log_lines=[f"line {i}" for i in range(30)])  # no live stream left
    assert log_tail(run, lines=3) == ["line 27", "line 28", "line 29"]
