"""Remote runs end to end: real Redis, a real S3 server and real worker node processes.

Every test submits through the SDK (Experiment.submit / Estimator / ScriptRunConfig) to this module's pool,
served by one node process (``node`` fixture); a few tests start extra nodes for pools of their own.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import tarfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import psutil
import pytest

from cluster import Estimator, Experiment, Model, Run, RunFailedError, ScriptRunConfig, Workspace, layout
from cluster.errors import WaitTimeoutError
from cluster.estimator import RunConfiguration
from cluster.experiment import submit_run
from tests.helpers import unique, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("node")]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sklearn-mnist" / "sklearn-mnist"
RUN_TIMEOUT = 120.0

# A script that starts a child in its own session (it escapes the process group), prints both pids, then
# waits forever: used for cancel and time-limit tests.
SLEEPER = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(f"PIDS {os.getpid()} {child.pid}", flush=True)
while True:
    time.sleep(0.1)
"""


# ---- helpers ------------------------------------------------------------------------------------





def submit(ws: Workspace, pool: str, source: Path, *, script: str = "train.py", arguments: list[Any] | None = None,
           experiment: str | None = None, max_seconds: float | None = None) -> Run:
    config = ScriptRunConfig(source_directory=source, script=script, arguments=arguments or [],
                             compute_target=pool, max_run_duration_seconds=max_seconds)
    return Experiment(ws, experiment or unique("exp")).submit(config)


def finish(run: Run, timeout: float = RUN_TIMEOUT) -> dict[str, Any]:
    return run.wait_for_completion(timeout=timeout, raise_on_error=False)


def driver_log(ws: Workspace, run: Run) -> list[str]:
    return ws.store.get_bytes(run.files_prefix() + layout.RUN_DRIVER_LOG).decode("utf-8").splitlines()


def live_log_line(ws: Workspace, run: Run, pattern: str, timeout: float = 60.0) -> re.Match[str]:
    """Wait for a line of the run's live log matching ``pattern``."""
    rx = re.compile(pattern)

    def find() -> re.Match[str] | None:
        for _id, fields in ws.redis.xrange(layout.rk_run_log(run.id)):
            m = rx.search(fields.get("l", ""))
            if m:
                return m
        if run.get_status() in ("Completed", "Failed", "Canceled"):
            pytest.fail(f"run ended {run.get_status()} before printing {pattern!r}: {run.get_details()}")
        return None

    return wait_until(find, timeout=timeout, what=f"log line {pattern!r} of {run.id}")


def script_processes(ws: Workspace, run: Run, *, must_be_running: bool = True) -> list[psutil.Process]:
    """The script's process and its escaped child, from the 'PIDS a b' line it prints.

    In a sandbox those are pids of the run's own pid namespace: they are matched to host processes through
    the last field of NSpid in /proc/<pid>/status, among the processes carrying the run's id."""
    m = live_log_line(ws, run, r"^PIDS (\d+) (\d+)$")
    wanted = [int(g) for g in m.groups()]
    found: dict[int, psutil.Process] = {}
    for p in psutil.process_iter():
        try:
            if p.environ().get("CLUSTER_RUN_ID") != run.id:
                continue
            status = Path(f"/proc/{p.pid}/status").read_text()
        except (psutil.Error, OSError):
            continue
        nspid = next((line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:")), str(p.pid))
        if int(nspid) in wanted:
            found[int(nspid)] = p
    procs = [found[pid] for pid in wanted if pid in found]
    if must_be_running:
        assert len(procs) == 2 and all(alive(p) for p in procs)
    return procs


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def load_idx(path: Path, labels: bool) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    if labels:
        return np.frombuffer(data, dtype=np.uint8, offset=8)
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(-1, 28 * 28)


# ---- the tutorial -------------------------------------------------------------------------------

def test_tutorial_flow_on_small_mnist(ws: Workspace, pool: str, mnist_dir: Path, tmp_path: Path) -> None:
    ds = ws.get_default_datastore()
    ds.upload(src_dir=mnist_dir, target_path="mnist", overwrite=True, show_progress=False)
    assert {f"mnist/{n}" for n in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")} <= set(ds.list("mnist"))

    est = Estimator(source_directory=EXAMPLE, entry_script="train.py", compute_target=pool,
                    script_params={"--data-folder": ds.as_mount(), "--regularization": 0.5,
                                   "--train-limit": 2000})
    exp = Experiment(ws, unique("sklearn-mnist"))
    run = exp.submit(est)
    details = run.wait_for_completion(timeout=240, raise_on_error=True)
    assert details["status"] == "Completed" and run.get_status() == "Completed"
    assert details["attempt"] == 1 and details["error"] is None

    metrics = run.get_metrics()
    assert set(metrics) == {"regularization rate", "accuracy"}
    assert metrics["regularization rate"] == 0.5
    assert 0.8 < metrics["accuracy"] <= 1.0
    assert "outputs/sklearn_mnist_model.pkl" in run.get_file_names()
    assert "logs/driver.log" in run.get_file_names()

    name = unique("sklearn-mnist")
    first = run.register_model(model_name=name, model_path="outputs/sklearn_mnist_model.pkl", tags={"k": "v"})
    second = run.register_model(model_name=name, model_path="outputs/sklearn_mnist_model.pkl")
    assert (first.version, second.version) == (1, 2)
    assert first.tags == {"k": "v"} and first.run_id == run.id

    latest = Model(ws, name)
    assert (latest.name, latest.version, latest.run_id) == (name, 2, run.id)
    assert [m.version for m in Model.list(ws, name)] == [1, 2]
    assert {(m.name, m.version) for m in Model.list(ws)} >= {(name, 1), (name, 2)}
    assert Model(ws, name, version=1).version == 1

    path = Path(latest.download(target_dir=tmp_path / "model", exist_ok=True))
    assert path.name == "sklearn_mnist_model.pkl"
    clf = joblib.load(path)
    x = load_idx(mnist_dir / "t10k-images-idx3-ubyte.gz", labels=False)[:500] / 255.0
    y = load_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz", labels=True)[:500]
    assert np.average(clf.predict(x) == y) > 0.8


# ---- failure, cancel, time limit ----------------------------------------------------------------

def test_failing_script_fails_once_with_its_stderr(ws: Workspace, pool: str,
                                                   make_source: Callable[..., Path]) -> None:
    src = make_source("""
        import sys
        print("about to fail")
        for i in range(30):
            print(f"stderr line {i}", file=sys.stderr)
        raise SystemExit("boom: the script gave up")
    """)
    run = submit(ws, pool, src)
    with pytest.raises(RunFailedError) as info:
        run.wait_for_completion(timeout=RUN_TIMEOUT, raise_on_error=True)
    assert "boom: the script gave up" in info.value.message

    details = run.get_details()
    assert details["status"] == "Failed"
    err = details["error"]
    assert err["kind"] == "user" and err["exit_code"] == 1
    assert err["stderr_tail"][-1] == "boom: the script gave up"
    assert "stderr line 29" in err["stderr_tail"]
    assert details["attempt"] == 1

    # No retry: once the node has run something submitted later (its queue is FIFO, one slot), the failed
    # run is still on its first and only attempt.
    barrier = submit(ws, pool, make_source("print('barrier')"))
    assert finish(barrier)["status"] == "Completed"
    again = run.get_details()
    assert (again["status"], again["attempt"], len(again["attempts"])) == ("Failed", 1, 1)
    assert again["attempts"][0]["outcome"] == "Failed"


def test_cancel_running_run_kills_its_process_tree(ws: Workspace, pool: str,
                                                   make_source: Callable[..., Path]) -> None:
    run = submit(ws, pool, make_source(SLEEPER))
    procs = script_processes(ws, run)
    assert run.get_status() == "Running"
    assert run.cancel() == "requested"
    details = finish(run)
    assert details["status"] == "Canceled"
    assert details["error"] is None
    assert details["attempt"] == 1
    wait_until(lambda: not any(alive(p) for p in procs), timeout=30, what="the script's processes to be gone")
    assert "logs/driver.log" in run.get_file_names()
    assert run.cancel() == "Canceled"  # nothing left to cancel


def test_cancel_queued_run_never_starts(ws: Workspace, nodes: Any, make_source: Callable[..., Path],
                                        caplog: pytest.LogCaptureFixture) -> None:
    lonely_pool = unique("queued")
    run = submit(ws, lonely_pool, make_source("print('should never run')"))
    assert "no node is serving pool" in caplog.text  # a warning of the cluster.experiment logger
    assert run.get_status() == "Queued"
    # the time limit holds even while there is no output at all (run in a thread: a bug here would hang)
    waited: list[BaseException] = []

    def wait() -> None:
        try:
            run.wait_for_completion(show_output=True, timeout=1)
        except BaseException as e:
            waited.append(e)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    waiter.join(30)
    assert not waiter.is_alive(), "wait_for_completion(show_output=True, timeout=1) ignored its timeout"
    assert len(waited) == 1 and isinstance(waited[0], WaitTimeoutError)
    assert run.cancel() == "canceled"
    assert run.get_status() == "Canceled"

    late = nodes.start(lonely_pool)
    barrier = submit(ws, lonely_pool, make_source("print('after the canceled one')"))
    assert finish(barrier)["status"] == "Completed"  # the node has seen the canceled run's message by now

    details = run.get_details()
    assert details["status"] == "Canceled"
    assert details["attempt"] == 0 and details["node"] is None
    assert "Preparing" not in details["timestamps"] and "Running" not in details["timestamps"]
    assert run.get_file_names() == []
    assert ws.runs.stored_record(run.id).status.value == "Canceled"
    assert barrier.get_details()["node"] == late.name


def test_time_limit_fails_the_run_and_leaves_no_process(ws: Workspace, pool: str,
                                                        make_source: Callable[..., Path]) -> None:
    run = submit(ws, pool, make_source(SLEEPER), max_seconds=2)
    procs = script_processes(ws, run, must_be_running=False)  # they may be gone already: that is fine
    details = finish(run)
    assert details["status"] == "Failed"
    assert details["error"]["kind"] == "timeout"
    assert "time limit" in details["error"]["message"]
    wait_until(lambda: not any(alive(p) for p in procs), timeout=30, what="the script's processes to be gone")


# ---- unsafe snapshots ---------------------------------------------------------------------------

def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


def _symlink(name: str, target: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info, None


@pytest.mark.parametrize("kind", ["dotdot", "symlink"])
def test_unsafe_snapshot_fails_the_run_and_writes_nothing_outside(ws: Workspace, pool: str, node: Any,
                                                                   tmp_path: Path, kind: str,
                                                                   tmp_path_factory: pytest.TempPathFactory) -> None:
    token = uuid.uuid4().hex[:10]
    script = _file("train.py", b"print('must not run')\n")
    if kind == "dotdot":
        members = [script, _file(f"../escaped-{token}.txt", b"gotcha"),
                   _file(f"sub/../../../../escaped-{token}.txt", b"gotcha")]
    else:
        members = [script, _symlink("link", str(tmp_path)), _file(f"link/escaped-{token}.txt", b"gotcha")]
    archive = _tar(members)
    digest = hashlib.sha256(archive).hexdigest()
    ws.store.put_bytes(layout.snapshot_key(digest), archive)

    rc = RunConfiguration(source_directory=tmp_path, entry_script="train.py", pool=pool)
    run = submit_run(Experiment(ws, unique("unsafe")), rc, tags={}, snapshot=digest)
    details = finish(run)
    assert details["status"] == "Failed"
    assert details["error"]["kind"] == "infrastructure"
    assert ("'..'" in details["error"]["message"]) if kind == "dotdot" else ("symlink" in details["error"]["message"])
    assert not any("must not run" in line for line in driver_log(ws, run))

    # the members aim at the node's folders and (via the link) at tmp_path: all inside this session's basetemp
    assert list(tmp_path_factory.getbasetemp().rglob(f"*{token}*")) == []
    snapshots = node.cache_dir / "snapshots"
    assert not (snapshots / digest).exists()
    # no leftover archive or temp dir (the entry's use lock, an empty file for tasks/cachegc.py, may stay)
    assert [p.name for p in snapshots.iterdir() if digest in p.name and p.name != f"{digest}.use"] == []


# ---- logs and metrics ---------------------------------------------------------------------------

def test_ten_thousand_log_lines_in_order(ws: Workspace, pool: str, make_source: Callable[..., Path],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    n = 10_000
    run = submit(ws, pool, make_source(f"""
        for i in range({n}):
            print(f"line {{i:05d}} ✓")
    """))
    expected = [f"line {i:05d} ✓" for i in range(n)]
    capsys.readouterr()
    details = run.wait_for_completion(show_output=True, timeout=RUN_TIMEOUT)
    assert details["status"] == "Completed"
    shown = [line for line in capsys.readouterr().out.splitlines() if line.startswith("line ")]
    assert shown == expected

    streamed = [line for _id, line in run.stream_log() if line.startswith("line ")]
    assert streamed == expected
    archived = [line for line in driver_log(ws, run) if line.startswith("line ")]
    assert archived == expected


def test_metrics_are_visible_while_the_run_runs(ws: Workspace, pool: str, make_source: Callable[..., Path],
                                                node: Any) -> None:
    run = submit(ws, pool, make_source("""
        import os, sys, time
        from cluster import Run
        run = Run.get_context()
        run.log("loss ü", 0.75)
        run.log_list("curve", [1, 2, 3])
        release = sys.argv[1]
        deadline = time.time() + 120
        while not os.path.exists(release):
            if time.time() > deadline:
                sys.exit("never released")
            time.sleep(0.05)
        run.log("loss ü", 0.25)
        run.log_row("table", epoch=1, acc=0.5)
    """), arguments=["release"])  # a file in the run's directory: the one place both the test and a sandbox see

    def partial() -> dict[str, Any] | None:
        m = run.get_metrics()
        return m if "curve" in m and "loss ü" in m else None

    mid = wait_until(partial, timeout=60, what="metrics while running")
    assert mid == {"loss ü": 0.75, "curve": [1, 2, 3]}
    assert run.get_status() == "Running"  # the script is still waiting for the release file
    assert run.get_metrics("loss ü") == {"loss ü": 0.75}

    from tasks.leftovers import cluster_tag, runs_dir

    (runs_dir(node.work_dir, cluster_tag(ws.settings.redis_url_masked)) / f"{run.id}.1" / "release").touch()
    assert finish(run)["status"] == "Completed"
    final = run.get_metrics()
    assert final == {"loss ü": [0.75, 0.25], "curve": [1, 2, 3], "table": {"epoch": 1, "acc": 0.5}}
    stored = ws.store.get_json(run.files_prefix() + layout.RUN_METRICS)
    assert [e["name"] for e in stored["events"]] == ["loss ü", "curve", "loss ü", "table"]


# ---- files --------------------------------------------------------------------------------------

def test_nested_non_ascii_output_files_round_trip(ws: Workspace, pool: str, make_source: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    payload = bytes(range(256)) * 64 + "naïve ✓\n".encode()
    src = make_source({"train.py": """
        import os, shutil
        names = ["outputs/ü dir/naïve/file ✓.txt", "outputs/a/b/c/d/deep.bin", "outputs/plain.txt",
                 "logs/extra log ✓.txt"]
        for name in names:
            os.makedirs(os.path.dirname(name), exist_ok=True)
            shutil.copyfile("payload.bin", name)
        os.makedirs("outputs/empty dir", exist_ok=True)
    """})
    (src / "payload.bin").write_bytes(payload)
    run = submit(ws, pool, src)
    assert finish(run)["status"] == "Completed"

    names = run.get_file_names()
    wanted = ["outputs/ü dir/naïve/file ✓.txt", "outputs/a/b/c/d/deep.bin", "outputs/plain.txt",
              "logs/extra log ✓.txt"]
    assert set(wanted) <= set(names)
    assert set(names) == {*wanted, "logs/driver.log"}

    one = run.download_file("outputs/ü dir/naïve/file ✓.txt", output_file_path=tmp_path / "one.txt")
    assert Path(one).read_bytes() == payload
    into_dir = tmp_path / "dir"
    into_dir.mkdir()
    assert Path(run.download_file("outputs/ü dir/naïve/file ✓.txt", into_dir)) == into_dir / "file ✓.txt"
    paths = run.download_files(prefix="outputs/", output_directory=tmp_path / "all")
    assert sorted(Path(p).relative_to(tmp_path / "all").as_posix() for p in paths) == sorted(
        n for n in wanted if n.startswith("outputs/"))
    for p in paths:
        assert Path(p).read_bytes() == payload


def test_second_run_on_the_node_downloads_nothing(ws: Workspace, pool: str, make_source: Callable[..., Path],
                                                  tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "nested").mkdir(parents=True)
    for i in range(3):
        (data / f"part-{i}.txt").write_text(f"part {i}\n" * 100)
    (data / "nested" / "more.txt").write_text("more\n")
    target = unique("reuse-data")
    ds = ws.get_default_datastore()
    ds.upload(src_dir=data, target_path=target, show_progress=False)

    # a unique comment makes a snapshot this node has never seen
    src = make_source(f"""
        # {uuid.uuid4().hex}
        import os, sys
        folder = sys.argv[1]
        files = sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)
        print("FILES", files)
        assert files == ["nested/more.txt", "part-0.txt", "part-1.txt", "part-2.txt"], files
        assert open(os.path.join(folder, "part-1.txt")).read() == "part 1\\n" * 100
    """)
    args = [ds.path(target).as_mount()]
    first = submit(ws, pool, src, arguments=args)
    assert finish(first)["status"] == "Completed"
    second = submit(ws, pool, src, arguments=args)
    assert finish(second)["status"] == "Completed"
    assert first.get_details()["node"] == second.get_details()["node"]
    assert first.get_details()["snapshot"] == second.get_details()["snapshot"]

    log1, log2 = "\n".join(driver_log(ws, first)), "\n".join(driver_log(ws, second))
    assert "fetched and extracted" in log1 and "reused from the node cache" not in log1.split("data ")[0]
    assert "4 file(s) downloaded" in log1
    assert "reused from the node cache" in log2 and "fetched and extracted" not in log2
    assert "0 file(s) downloaded (0 bytes), 4 reused" in log2, log2


def test_a_script_cannot_spoil_the_node_data_cache(ws: Workspace, pool: str, make_source: Callable[..., Path],
                                                   tmp_path: Path) -> None:
    """Mounted data is shared by every run on the node. A script that writes to it anyway (as root, file modes
    do not stop it) must not hand the next run altered data, even when the size stays the same."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "labels.txt").write_text("original\n" * 50)
    target = unique("tamper-data")
    ds = ws.get_default_datastore()
    ds.upload(src_dir=data, target_path=target, show_progress=False)
    src = make_source("""
        import os, sys
        path = os.path.join(sys.argv[1], "labels.txt")
        print("CONTENT", open(path).read().splitlines()[0])
        if sys.argv[2] == "tamper":
            try:
                with open(path, "r+") as f:
                    f.write("TAMPERED")  # same length as "original"
                print("tampered")
            except OSError as e:
                print("read-only:", e)
    """)
    ref = ds.path(target).as_mount()
    first = submit(ws, pool, src, arguments=[ref, "tamper"])
    assert finish(first)["status"] == "Completed"
    second = submit(ws, pool, src, arguments=[ref, "read"])
    assert finish(second)["status"] == "Completed"
    assert "CONTENT original" in driver_log(ws, second)


def test_reattach_and_list_runs(ws: Workspace, pool: str, make_source: Callable[..., Path]) -> None:
    exp = Experiment(ws, unique("reattach"))
    config = ScriptRunConfig(make_source("print('hi')"), "train.py", compute_target=pool)
    first = exp.submit(config)
    second = exp.submit(config)
    for r in (first, second):
        assert finish(r)["status"] == "Completed"
    assert [r.id for r in exp.get_runs()] == [second.id, first.id]
    assert [r.id for r in Experiment(ws, exp.name).get_runs()] == [second.id, first.id]

    attached = Run(Experiment(ws, exp.name), first.id)
    assert attached.get_status() == "Completed"
    assert attached.get_details()["runId"] == first.id
    assert "hi" in [line for _id, line in attached.stream_log()]
    assert attached.get_file_names() == first.get_file_names() == ["logs/driver.log"]


def test_following_the_log_of_a_final_run_ends_without_eof(ws: Workspace, pool: str,
                                                           make_source: Callable[..., Path]) -> None:
    """An attempt that died (node SIGKILLed) leaves its live lines but no eof; once the run is final (canceled or
    failed afterwards), following its log must end instead of waiting forever."""
    run = submit(ws, pool, make_source("print('done')"))
    assert finish(run)["status"] == "Completed"
    key = layout.rk_run_log(run.id)
    ws.redis.delete(key)
    ws.redis.xadd(key, {"s": "o", "l": "partial line of a dead attempt"})
    lines: list[str] = []
    follower = threading.Thread(target=lambda: lines.extend(line for _id, line in run.stream_log()), daemon=True)
    follower.start()
    follower.join(30)
    assert not follower.is_alive(), "stream_log() of a final run did not end"
    assert lines == ["partial line of a dead attempt"]


# ---- secrets ------------------------------------------------------------------------------------

def test_script_never_sees_secrets(ws: Workspace, pool: str, make_source: Callable[..., Path], tmp_path: Path,
                                   cluster_dir: Path, node_secrets: dict[str, str]) -> None:
    run = submit(ws, pool, make_source("""
        import json, os
        os.makedirs("outputs", exist_ok=True)
        json.dump(dict(os.environ), open("outputs/env.json", "w"))
    """))
    assert finish(run)["status"] == "Completed"
    env = json.loads(Path(run.download_file("outputs/env.json", tmp_path / "env.json")).read_text())
    assert env["CLUSTER_RUN_ID"] == run.id  # it is the run's environment

    config = json.loads((cluster_dir / "config.json").read_text())
    secrets = [ws.settings.redis_url, config["redis_password"], ws.settings.s3_secret_key,
               ws.settings.s3_access_key, *node_secrets.values()]
    dump = json.dumps(env)
    for secret in secrets:
        assert secret not in dump
    assert not [k for k in env if k.startswith(("AWS_", "CLUSTER_REDIS", "CLUSTER_S3", "MINIO_", "REDIS"))]
    assert not [k for k in env if any(w in k.upper() for w in ("PASSWORD", "SECRET", "TOKEN"))]


# ---- model registry -----------------------------------------------------------------------------

def test_concurrent_register_model_gives_distinct_consecutive_versions(ws: Workspace, pool: str,
                                                                      make_source: Callable[..., Path]) -> None:
    run = submit(ws, pool, make_source("""
        import os
        os.makedirs("outputs/model", exist_ok=True)
        open("outputs/model/weights.txt", "w").write("w")
        open("outputs/model/config.json", "w").write("{}")
    """))
    assert finish(run)["status"] == "Completed"
    name = unique("concurrent")
    count = 8
    versions: list[int] = []
    errors: list[BaseException] = []
    read_errors: list[BaseException] = []
    start = threading.Barrier(count)
    done = threading.Event()

    def register() -> None:
        try:
            start.wait()
            versions.append(run.register_model(name, "outputs/model").version)
        except BaseException as e:  # reported below
            errors.append(e)

    def read() -> None:
        """Readers during registrations see complete versions only (never a half-registered one)."""
        while not done.is_set():
            try:
                if Model.list(ws, name):
                    latest = Model(ws, name)
                    assert latest.files.keys() == {"weights.txt", "config.json"}
            except BaseException as e:
                read_errors.append(e)
                return

    reader = threading.Thread(target=read)
    reader.start()
    threads = [threading.Thread(target=register) for _ in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    done.set()
    reader.join(60)
    assert errors == []
    assert read_errors == []
    assert sorted(versions) == list(range(1, count + 1))
    models = Model.list(ws, name)
    assert [m.version for m in models] == list(range(1, count + 1))
    assert all(m.files.keys() == {"weights.txt", "config.json"} for m in models)
    assert Model(ws, name).version == count
