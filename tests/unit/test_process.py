"""tasks.process: real child processes, no mocks."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from cluster.errors import ClusterError, MissingBinaryError, UsageError
from tasks.process import (
    LINE_SPLIT_MARKER,
    MAX_LINE_BYTES,
    PROCESS_TAG_VAR,
    ProcessResult,
    ResourceLimits,
    run_env,
    run_supervised,
    scrubbed_env,
    split_lines,
)


class Collector:
    """on_line callback that records lines and the threads it was called from."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.threads: set[int] = set()

    def __call__(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))
        self.threads.add(threading.get_ident())

    def stream(self, name: str) -> list[str]:
        return [line for s, line in self.lines if s == name]


def _script(tmp_path: Path, body: str, name: str = "script.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _run(tmp_path: Path, body: str, **kwargs: object) -> tuple[ProcessResult, Collector]:
    script = _script(tmp_path, body)
    out = Collector()
    env = kwargs.pop("env", None) or scrubbed_env(os.environ, extra={})
    result = run_supervised(
        [sys.executable, str(script)], cwd=tmp_path, env=env, on_line=out, **kwargs  # type: ignore[arg-type]
    )
    return result, out


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _group_members(pgid: int) -> list[int]:
    alive = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except (psutil.Error, OSError):
            continue
    return alive


def _wait_gone(pids: list[int], within: float = 2.0) -> list[int]:
    """Pids still alive after ``within`` seconds (init may take a moment to reap orphans)."""
    end = time.monotonic() + within
    while True:
        left = [pid for pid in pids if not _gone(pid)]
        if not left or time.monotonic() > end:
            return left
        time.sleep(0.05)


# ---- output -------------------------------------------------------------------------------------

def test_ten_thousand_lines_complete_in_order_from_calling_thread(tmp_path: Path) -> None:
    result, out = _run(tmp_path, """
        for i in range(10_000):
            print(f"line {i}")
    """)
    assert result.exit_code == 0 and result.signal is None and result.ok
    assert out.stream("stdout") == [f"line {i}" for i in range(10_000)]
    assert out.threads == {threading.get_ident()}


def test_stdout_stderr_tail_partial_last_line_long_line_and_bad_bytes(tmp_path: Path) -> None:
    result, out = _run(tmp_path, """
        import sys
        print("to stdout")
        print("x" * 1_000_000)
        for i in range(30):
            print(f"err {i}", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        sys.stdout.buffer.write(b"bad \\xff bytes\\r\\n")
        sys.stdout.buffer.write(b"no newline at end")
        sys.exit(3)
    """)
    assert result.exit_code == 3 and result.signal is None and not result.ok
    assert result.describe() == "exit code 3"
    pieces = ["x" * MAX_LINE_BYTES + LINE_SPLIT_MARKER] * (1_000_000 // MAX_LINE_BYTES)
    pieces.append("x" * (1_000_000 % MAX_LINE_BYTES))
    assert out.stream("stdout") == ["to stdout", *pieces, "bad \ufffd bytes", "no newline at end"]
    assert out.stream("stderr") == [f"err {i}" for i in range(30)]
    assert result.stderr_tail == tuple(f"err {i}" for i in range(10, 30))


def test_killing_signal_is_reported(tmp_path: Path) -> None:
    result, _ = _run(tmp_path, """
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert result.exit_code is None and result.signal == signal.SIGKILL
    assert result.describe() == "killed by signal SIGKILL"
    assert not result.timed_out and not result.canceled


# ---- stopping the tree --------------------------------------------------------------------------

_STUBBORN_TREE = """
    import os, signal, subprocess, sys, time
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    def on_term(signum, frame):
        print("got TERM", flush=True)
    signal.signal(signal.SIGTERM, on_term)
    escaped = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True)
    grandkid = subprocess.Popen(["sleep", "60"])
    print("pids", os.getpid(), escaped.pid, grandkid.pid, flush=True)
    time.sleep(0.3)  # let the children start (and ignore SIGTERM)
    print("ready", flush=True)
    while True:
        time.sleep(0.1)
"""


def _pids(out: Collector) -> list[int]:
    line = next(line for line in out.stream("stdout") if line.startswith("pids "))
    return [int(p) for p in line.split()[1:]]


def test_timeout_sends_term_then_kill_and_leaves_nothing(tmp_path: Path) -> None:
    result, out = _run(tmp_path, _STUBBORN_TREE, timeout=1.5, grace=0.5)
    assert result.timed_out and not result.canceled
    assert result.signal == signal.SIGKILL  # it ignored the TERM (printed instead)
    assert result.describe() == "time limit of 1.5s exceeded"
    assert "got TERM" in out.stream("stdout")
    assert 1.5 <= result.duration < 6
    main, escaped, grandkid = _pids(out)
    assert _wait_gone([main, escaped, grandkid]) == []
    assert _group_members(main) == []


def test_cancel_event_stops_the_tree(tmp_path: Path) -> None:
    cancel = threading.Event()
    timer = threading.Timer(1.0, cancel.set)
    timer.start()
    try:
        result, out = _run(tmp_path, _STUBBORN_TREE, cancel=cancel, grace=0.5, timeout=30)
    finally:
        timer.cancel()
    assert result.canceled and not result.timed_out
    assert result.describe() == "canceled"
    assert result.duration < 6
    main, escaped, grandkid = _pids(out)
    assert _wait_gone([main, escaped, grandkid]) == []


def test_leftovers_are_killed_after_main_child_exits(tmp_path: Path) -> None:
    # The main child exits at once, before any tree walk could see its children: the escaped one
    # is found through the environment marker, the backgrounded one through the process group.
    result, out = _run(tmp_path, """
        import os, subprocess, sys
        stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
        escaped = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True)
        background = subprocess.Popen("sleep 60 &", shell=True)
        background.wait()
        print("pids", os.getpid(), escaped.pid, flush=True)
    """, grace=0.5)
    assert result.exit_code == 0 and result.ok
    main, escaped = _pids(out)
    assert _wait_gone([escaped]) == []
    assert _wait_gone(_group_members(main)) == []


def test_on_line_error_kills_the_child_and_propagates(tmp_path: Path) -> None:
    script = _script(tmp_path, """
        import os, time
        print(os.getpid(), flush=True)
        time.sleep(60)
    """)
    seen: list[str] = []

    def boom(stream: str, line: str) -> None:
        seen.append(line)
        raise RuntimeError("consumer failed")

    with pytest.raises(RuntimeError, match="consumer failed"):
        run_supervised([sys.executable, str(script)], cwd=tmp_path, env=dict(os.environ), on_line=boom)
    assert _wait_gone([int(seen[0])]) == []


# ---- environment and limits ---------------------------------------------------------------------

def test_run_env_is_an_allowlist() -> None:
    base = {
        "PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC", "PYTHONPATH": "/x",
        "PYTHONSTARTUP": "/evil.py", "PYTHONHASHSEED": "0", "REDIS_PASSWORD": "p", "AWS_SECRET_ACCESS_KEY": "s",
        "OPENAI_API_KEY": "k", "DATABASE_URL": "postgres://u:p@h/db", "BROKER_URL": "redis://:p@h",
        "CLUSTER_S3_SECRET_KEY": "s", "LD_PRELOAD": "/x.so", "PIP_INDEX_URL": "https://u:p@pypi",
    }
    env = run_env(base, extra={"OMP_NUM_THREADS": "2"}, user={"MY_FLAG": "1", "CLUSTER_RUN_ID": "forged"},
                  channel={"CLUSTER_RUN_ID": "run-1"})
    assert env == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "LC_ALL": "C", "TZ": "UTC", "PYTHONHASHSEED": "0",
                   "OMP_NUM_THREADS": "2", "MY_FLAG": "1", "CLUSTER_RUN_ID": "run-1"}
    build = scrubbed_env(base, extra={})
    assert build["PIP_INDEX_URL"] == "https://u:p@pypi" and build["HOME"] == "/root"
    assert not {"OPENAI_API_KEY", "DATABASE_URL", "BROKER_URL", "AWS_SECRET_ACCESS_KEY"} & build.keys()


def test_split_lines_caps_lines_and_turns_carriage_returns_into_lines(tmp_path: Path) -> None:
    data = b"a\r\nb\n\n\rprogress 1\rprogress 2\rdone\n" + b"y" * 10 + b"\ntail"
    path = tmp_path / "out"
    path.write_bytes(data)
    with open(path, "rb") as fh:
        m = LINE_SPLIT_MARKER.encode()
        assert list(split_lines(fh, max_line=4)) == [
            b"a", b"b", b"", b"prog" + m, b"ress" + m, b" 1", b"prog" + m, b"ress" + m, b" 2", b"done",
            b"yyyy" + m, b"yyyy" + m, b"yy", b"tail"]


def test_child_does_not_see_scrubbed_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_PASSWORD", "AWS_SECRET_ACCESS_KEY", "CLUSTER_REDIS_URL", "MINIO_SECRET_KEY"):
        monkeypatch.setenv(name, "hunter2")
    env = scrubbed_env(os.environ, extra={"CLUSTER_RUN_ID": "run-42"})
    result, out = _run(tmp_path, """
        import json, os
        print(json.dumps(dict(os.environ)))
    """, env=env)
    assert result.ok
    seen = json.loads(out.stream("stdout")[0])
    assert "hunter2" not in seen.values()
    assert seen["CLUSTER_RUN_ID"] == "run-42"
    assert seen["PATH"] == os.environ["PATH"]
    assert PROCESS_TAG_VAR in seen


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and affinity are Linux")
def test_memory_and_cpu_limits_apply_in_the_child(tmp_path: Path) -> None:
    result, out = _run(tmp_path, """
        import os, sys
        print("cpus", len(os.sched_getaffinity(0)), flush=True)
        try:
            block = bytearray(2 * 1024**3)
        except MemoryError:
            print("MemoryError", flush=True)
            sys.exit(7)
        print("allocated", len(block))
    """, limits=ResourceLimits(memory_bytes=512 * 1024**2, cpu_count=1))
    assert out.stream("stdout") == ["cpus 1", "MemoryError"]
    assert result.exit_code == 7


def test_resource_limits_reject_nonsense() -> None:
    with pytest.raises(UsageError):
        ResourceLimits(memory_bytes=0)
    with pytest.raises(UsageError):
        ResourceLimits(cpu_count=-1)


# ---- errors and descriptions --------------------------------------------------------------------

def test_missing_interpreter_is_a_cluster_error(tmp_path: Path) -> None:
    with pytest.raises(MissingBinaryError, match="no-such-python") as info:
        run_supervised(["/nonexistent/no-such-python", "train.py"], cwd=tmp_path, env={},
                       on_line=lambda s, line: None)
    assert isinstance(info.value, ClusterError) and info.value.hint


def test_missing_working_directory_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        run_supervised([sys.executable, "-c", "pass"], cwd=tmp_path / "nope", env={},
                       on_line=lambda s, line: None)


def test_describe() -> None:
    base = {"exit_code": None, "signal": None, "timed_out": False, "canceled": False,
            "duration": 1.0, "stderr_tail": ()}
    assert ProcessResult(**{**base, "exit_code": 0}).describe() == "exit code 0"  # type: ignore[arg-type]
    assert ProcessResult(**{**base, "signal": 15}).describe() == "killed by signal SIGTERM"  # type: ignore[arg-type]
    assert ProcessResult(**{**base, "signal": 200}).describe() == "killed by signal 200"  # type: ignore[arg-type]
    timed = ProcessResult(**{**base, "signal": 9, "timed_out": True, "timeout": 5.0})  # type: ignore[arg-type]
    assert timed.describe() == "time limit of 5s exceeded"
    assert ProcessResult(**{**base, "signal": 15, "canceled": True}).describe() == "canceled"  # type: ignore[arg-type]
