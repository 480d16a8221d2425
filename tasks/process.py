"""Run a user's script under supervision: line-by-line output, time limit, cancel, clean process tree.

``run_supervised`` is what a node uses to run ``train.py`` (and ``pip``) for a run:

* The child starts in a new session (``start_new_session=True``), so it and everything it forks
  share one process group that can be signalled as a whole. stdin is ``/dev/null``.
* stdout and stderr are read by two reader threads into one queue; **every ``on_line`` call happens
  in the thread that called** ``run_supervised``, one line at a time, in arrival order. Lines of one
  stream keep their order; the interleaving of the two streams is the order the reader threads saw
  them. The consumer needs no locking.
* On a time limit or a cancel request the whole tree gets SIGTERM, then SIGKILL ``grace`` seconds
  later if anything is still alive. "The whole tree" is the child's process group *plus* every
  descendant that escaped into another session or group (e.g. ``Popen(..., start_new_session=True)``):
  those are found by walking the tree with psutil every fraction of a second while the run lives,
  and, at the end, by scanning for processes that carry this run's private environment marker
  (``CLUSTER_PROCESS_TAG``), so a process that escaped *and* lost its parent is still found.
* **When the main child exits on its own, leftovers are killed too**: a script that started a
  background process (``sleep 100 &``, a dataloader that was never joined) does not leave orphans
  on the node. They get the same SIGTERM, ``grace``, SIGKILL treatment.

``scrubbed_env`` builds the child's environment from the node's without the node's secrets.
"""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import signal as _signal
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from cluster.errors import MissingBinaryError, UsageError

__all__ = [
    "PROCESS_TAG_VAR",
    "ProcessResult",
    "ResourceLimits",
    "run_supervised",
    "scrubbed_env",
]

#: Environment variable set in every supervised child, unique per call; used to find escaped descendants.
PROCESS_TAG_VAR = "CLUSTER_PROCESS_TAG"

STDERR_TAIL_LINES = 20
_POLL = 0.05  # seconds between checks of the child, the deadline and the cancel event
_TREE_POLL = 0.25  # seconds between walks of the process tree
_EOF_WAIT = 5.0  # after everything is dead, how long to wait for pipes held by unkillable processes

_DEFAULT_SECRET_PREFIXES = ("CLUSTER_", "AWS_", "MINIO_", "REDIS", "CELERY_", "S3_")
_SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN", "ACCESS_KEY")


# ---- environment --------------------------------------------------------------------------------

def scrubbed_env(
    base: Mapping[str, str],
    *,
    extra: Mapping[str, str],
    secret_prefixes: Iterable[str] = _DEFAULT_SECRET_PREFIXES,
) -> dict[str, str]:
    """Return a copy of ``base`` fit for a user's script, with ``extra`` added.

    Dropped: every variable whose name starts with one of ``secret_prefixes`` or contains
    PASSWORD, SECRET, TOKEN or ACCESS_KEY (both checks case-insensitive). Everything else (PATH,
    HOME, LANG, ...) is kept. ``extra`` is trusted and added last, unfiltered, so it may set e.g.
    ``CLUSTER_RUN_ID``.
    """
    prefixes = tuple(p.upper() for p in secret_prefixes)
    env: dict[str, str] = {}
    for name, value in base.items():
        upper = name.upper()
        if upper.startswith(prefixes) or any(word in upper for word in _SECRET_WORDS):
            continue
        env[name] = value
    env.update(extra)
    return env


# ---- limits -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResourceLimits:
    """Limits applied inside the child before it execs.

    ``memory_bytes`` caps the address space (``RLIMIT_AS``): allocations beyond it fail (Python
    raises ``MemoryError``). ``cpu_count`` pins the child to the first N CPUs this node process may
    use (``sched_setaffinity``). Either is skipped silently where the platform lacks it.
    """

    memory_bytes: int | None = None
    cpu_count: int | None = None

    def __post_init__(self) -> None:
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise UsageError(f"memory limit must be positive, got {self.memory_bytes}",
                             hint="give memory_bytes in bytes, or None for no limit")
        if self.cpu_count is not None and self.cpu_count <= 0:
            raise UsageError(f"cpu limit must be positive, got {self.cpu_count}",
                             hint="give cpu_count as a number of CPUs, or None for no limit")


def _limits_preexec(limits: ResourceLimits) -> Callable[[], None] | None:
    """Build the ``preexec_fn`` for ``limits``; everything is computed here, in the parent.

    The function itself only makes two system calls, so it is as safe as a preexec_fn can be in a
    threaded parent.
    """
    rlimit: tuple[int, int] | None = None
    if limits.memory_bytes is not None and hasattr(resource, "RLIMIT_AS"):
        _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        soft = limits.memory_bytes if hard == resource.RLIM_INFINITY else min(limits.memory_bytes, hard)
        rlimit = (soft, hard)
    cpus: set[int] | None = None
    if limits.cpu_count is not None and hasattr(os, "sched_setaffinity"):
        allowed = sorted(os.sched_getaffinity(0))
        cpus = set(allowed[: limits.cpu_count])
    if rlimit is None and cpus is None:
        return None

    def apply() -> None:
        if rlimit is not None:
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(resource.RLIMIT_AS, rlimit)
        if cpus is not None:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, cpus)

    return apply


# ---- result -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProcessResult:
    """How a supervised process ended.

    ``exit_code`` is set when it exited, ``signal`` when a signal ended it (from a negative
    returncode); ``timed_out``/``canceled`` say the supervisor stopped it, and why. ``timeout`` is the
    limit that was in force (for messages).
    """

    exit_code: int | None
    signal: int | None
    timed_out: bool
    canceled: bool
    duration: float
    stderr_tail: tuple[str, ...]
    timeout: float | None = None

    @property
    def ok(self) -> bool:
        """True when the process exited 0 by itself."""
        return self.exit_code == 0 and not self.timed_out and not self.canceled

    def describe(self) -> str:
        """A human cause: 'exit code 1', 'killed by signal SIGKILL', 'time limit of 5s exceeded', ...

        'canceled' and the time limit take precedence over how the process actually ended.
        """
        if self.canceled:
            return "canceled"
        if self.timed_out:
            limit = "" if self.timeout is None else f" of {_seconds(self.timeout)}"
            return f"time limit{limit} exceeded"
        if self.signal is not None:
            return f"killed by signal {_signal_name(self.signal)}"
        return f"exit code {self.exit_code}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _signal_name(number: int) -> str:
    try:
        return _signal.Signals(number).name
    except ValueError:
        return f"{number}"


# ---- supervision --------------------------------------------------------------------------------

_EOF = object()


def _reader(name: str, pipe: IO[bytes], out: queue.Queue[tuple[str, object]], stop: threading.Event) -> None:
    """Read ``pipe`` line by line into ``out`` as ``(name, text)``; put ``(name, _EOF)`` at the end."""

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    try:
        for raw in iter(pipe.readline, b""):
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            if not put((name, raw.decode("utf-8", errors="replace"))):
                return
    except (OSError, ValueError):  # pipe closed under us
        pass
    finally:
        put((name, _EOF))


class _Tree:
    """The processes belonging to one supervised child: its group plus tracked descendants."""

    def __init__(self, proc: subprocess.Popen[bytes], tag: str) -> None:
        self.proc = proc
        self.pgid = proc.pid  # start_new_session: the child leads its own session and group
        self.tag = tag
        self.known: dict[int, psutil.Process] = {}
        try:
            self.root: psutil.Process | None = psutil.Process(proc.pid)
        except psutil.Error:
            self.root = None

    def refresh(self) -> None:
        """Remember every current descendant of the child (they may escape the group later)."""
        if self.root is None or _exited(self.proc):
            return
        try:
            for child in self.root.children(recursive=True):
                self.known.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def collect(self) -> list[psutil.Process]:
        """Every live process of the tree except the main child: tracked, in the group, or tagged."""
        self.refresh()
        me = os.getpid()
        for p in psutil.process_iter():
            if p.pid in self.known or p.pid in (me, self.proc.pid):
                continue
            try:
                if os.getpgid(p.pid) == self.pgid or p.environ().get(PROCESS_TAG_VAR) == self.tag:
                    self.known[p.pid] = p
            except (psutil.Error, OSError):
                continue
        return [p for p in self.known.values() if _alive(p)]

    def signal_all(self, sig: int, procs: list[psutil.Process]) -> None:
        """Send ``sig`` to the whole process group and to each process in ``procs``."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)

    def all_dead(self, procs: list[psutil.Process]) -> bool:
        return _exited(self.proc) and not any(_alive(p) for p in procs)


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Has the child exited? Does not reap it, so its pid (= the group id) cannot be reused meanwhile."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return proc.poll() is not None


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run_supervised(
    argv: list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    on_line: Callable[[str, str], None],
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    grace: float = 5.0,
    limits: ResourceLimits | None = None,
) -> ProcessResult:
    """Run ``argv`` in ``cwd`` with exactly ``env``, deliver its output, and clean up its process tree.

    ``on_line(stream, line)`` is called with stream ``'stdout'`` or ``'stderr'`` and the decoded line
    (utf-8, undecodable bytes replaced, without the trailing newline), always from the calling
    thread. If ``on_line`` raises, the whole tree is killed at once and the exception propagates.

    ``timeout`` (seconds) and ``cancel`` stop the run: SIGTERM to the tree, SIGKILL after ``grace``
    seconds. After the main child exits, whatever it left running is stopped the same way.

    Raises ``MissingBinaryError`` when ``argv[0]`` cannot be found or executed, ``UsageError`` when
    ``cwd`` is not a directory.
    """
    if not argv:
        raise UsageError("nothing to run: the command is empty", hint="pass the interpreter and script")
    if not Path(cwd).is_dir():
        raise UsageError(f"cannot start {argv[0]!r}: working directory {str(cwd)!r} does not exist",
                         hint="create the run's working directory before starting the script")
    tag = uuid.uuid4().hex
    child_env = dict(env)
    child_env[PROCESS_TAG_VAR] = tag
    preexec = _limits_preexec(limits) if limits is not None else None

    started = time.monotonic()
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=preexec,
        )
    except FileNotFoundError as e:
        raise MissingBinaryError(
            f"cannot start {argv[0]!r}: no such file or directory",
            hint="check that the interpreter (and the run's environment) exists on this node, "
                 "or give its absolute path",
        ) from e
    except PermissionError as e:
        raise MissingBinaryError(
            f"cannot start {argv[0]!r}: permission denied",
            hint="make the file executable (chmod +x) or run it through its interpreter",
        ) from e

    assert proc.stdout is not None and proc.stderr is not None
    lines: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=10_000)
    stop_readers = threading.Event()
    readers = [
        threading.Thread(target=_reader, args=(name, pipe, lines, stop_readers),
                         name=f"supervise-{proc.pid}-{name}", daemon=True)
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    for t in readers:
        t.start()

    tree = _Tree(proc, tag)
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    deadline = None if timeout is None else started + timeout
    timed_out = canceled = False
    open_streams = 2
    # phases: "run" -> "term" (SIGTERM sent, waiting up to kill_at) -> "drain" (waiting for EOF)
    phase = "run"
    targets: list[psutil.Process] = []
    kill_at = drain_until = 0.0
    next_tree_poll = started
    completed = False
    try:
        while True:
            item: tuple[str, object] | None
            try:
                item = lines.get(timeout=_POLL)
            except queue.Empty:
                item = None
            if item is not None:
                stream, text = item
                if text is _EOF:
                    open_streams -= 1
                else:
                    assert isinstance(text, str)
                    if stream == "stderr":
                        tail.append(text)
                    on_line(stream, text)
                if phase == "run" and not lines.empty() and time.monotonic() < next_tree_poll:
                    continue  # keep up with output; checks below run at least every _TREE_POLL

            now = time.monotonic()
            if phase == "run":
                if now >= next_tree_poll:
                    tree.refresh()
                    next_tree_poll = now + _TREE_POLL
                stopping = False
                if _exited(proc):
                    stopping = True  # main child done: stop whatever it left behind
                elif cancel is not None and cancel.is_set():
                    canceled = stopping = True
                elif deadline is not None and now >= deadline:
                    timed_out = stopping = True
                if stopping:
                    targets = tree.collect()
                    if not _exited(proc) or targets:
                        tree.signal_all(_signal.SIGTERM, targets)
                        phase, kill_at = "term", now + grace
                    else:
                        phase, drain_until = "drain", now + _EOF_WAIT
            elif phase == "term":
                if tree.all_dead(targets):
                    # Something may have slipped in between collect() and SIGTERM; sweep the group.
                    tree.signal_all(_signal.SIGKILL, [])
                    phase, drain_until = "drain", now + _EOF_WAIT
                elif now >= kill_at:
                    targets = list({p.pid: p for p in [*targets, *tree.collect()]}.values())
                    tree.signal_all(_signal.SIGKILL, targets)
                    phase, drain_until = "drain", now + _EOF_WAIT
            elif phase == "drain":
                if open_streams == 0 and _exited(proc):
                    proc.wait()
                    break
                if now >= drain_until:
                    # A process we may not signal (another user) holds the pipes: stop listening,
                    # after delivering what has already arrived.
                    if not _exited(proc):
                        proc.kill()
                    proc.wait()
                    while True:
                        try:
                            stream, text = lines.get_nowait()
                        except queue.Empty:
                            break
                        if isinstance(text, str):
                            if stream == "stderr":
                                tail.append(text)
                            on_line(stream, text)
                    break
        completed = True
    finally:
        if not completed:  # on_line raised, or KeyboardInterrupt: leave nothing behind
            tree.signal_all(_signal.SIGKILL, tree.collect())
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=_EOF_WAIT)
        stop_readers.set()
        for t in readers:
            t.join(timeout=1.0)
        for pipe in (proc.stdout, proc.stderr):
            if not any(t.is_alive() for t in readers):
                with contextlib.suppress(OSError):
                    pipe.close()

    duration = time.monotonic() - started
    code = proc.returncode
    return ProcessResult(
        exit_code=code if code is not None and code >= 0 else None,
        signal=-code if code is not None and code < 0 else None,
        timed_out=timed_out,
        canceled=canceled,
        duration=duration,
        stderr_tail=tuple(tail),
        timeout=timeout,
    )
