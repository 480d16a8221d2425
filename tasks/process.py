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

``run_env`` builds a script's environment from an allowlist (``scrubbed_env``: the same for package builds).

Everything a script prints is hostile input: output is read in bounded chunks, a line longer than
``MAX_LINE_BYTES`` is delivered in pieces (each but the last ending with ``LINE_SPLIT_MARKER``), and a
carriage return ends a line too, so a ``\r`` progress bar shows as live lines.
"""

from __future__ import annotations

import contextlib
import os
import queue
import resource
import select
import signal as _signal
import subprocess
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import psutil

from cluster.errors import MissingBinaryError, UsageError

__all__ = [
    "PROCESS_TAG_VAR",
    "ProcessResult",
    "ResourceLimits",
    "run_env",
    "run_supervised",
    "scrubbed_env",
]

#: Environment variable set in every supervised child, unique per call; used to find escaped descendants.
PROCESS_TAG_VAR = "CLUSTER_PROCESS_TAG"

STDERR_TAIL_LINES = 20
MAX_LINE_BYTES = 64 * 1024
LINE_SPLIT_MARKER = " [line split: continues]"
_READ_CHUNK = 64 * 1024
_POLL = 0.05  # seconds between checks of the child, the deadline and the cancel event
_TREE_POLL = 0.25  # seconds between walks of the process tree
_EOF_WAIT = 5.0  # after everything is dead, how long to wait for pipes held by unkillable processes

#: Variables a run may inherit from the node (names, or prefixes ending in ``_``/``*``): nothing else passes.
RUN_ENV_ALLOW = ("PATH", "LANG", "LANGUAGE", "LC_*", "TZ", "TERM")
#: Python variables that change only how the interpreter behaves, never where it loads code from.
SAFE_PYTHON_VARS = ("PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE",
                    "PYTHONUTF8", "PYTHONFAULTHANDLER", "PYTHONWARNINGS", "PYTHONOPTIMIZE")
#: Thread-count variables a node sets for its runs (passed in ``extra``).
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "NUMEXPR_NUM_THREADS")
#: Extra variables a package build (pip) may also inherit: its own settings and proxies.
BUILD_ENV_ALLOW = ("PIP_*", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
                   "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "HOME", "TMPDIR")
#: Prefix of the run's own channel variables (set by the node, never taken from the user).
RUN_CHANNEL_PREFIX = "CLUSTER_RUN_"


def _allowed(name: str, allow: Iterable[str]) -> bool:
    for pattern in allow:
        if pattern.endswith("*"):
            if name.startswith(pattern[:-1]):
                return True
        elif name == pattern:
            return True
    return False


def run_env(
    base: Mapping[str, str],
    *,
    extra: Mapping[str, str],
    user: Mapping[str, str] | None = None,
    channel: Mapping[str, str] | None = None,
    allow: Iterable[str] = (),
) -> dict[str, str]:
    """The environment of a run's script, built from an allowlist, never from the node's whole environment.

    From ``base`` (the node's environment) only ``RUN_ENV_ALLOW``, ``SAFE_PYTHON_VARS`` and ``allow`` pass.
    Then ``extra`` (the node's own settings: HOME, TMPDIR, thread counts, PYTHONPATH of the sandbox), then
    ``user`` (the run's ``environment_variables``), then ``channel`` (``CLUSTER_RUN_*`` and the like), which
    the user cannot override.
    """
    allow_all = (*RUN_ENV_ALLOW, *SAFE_PYTHON_VARS, *allow)
    env = {k: v for k, v in base.items() if _allowed(k, allow_all)}
    env.update(extra)
    for k, v in (user or {}).items():
        if k == PROCESS_TAG_VAR or k.startswith(RUN_CHANNEL_PREFIX):
            continue
        env[k] = v
    env.update(channel or {})
    return env


def scrubbed_env(base: Mapping[str, str], *, extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of a package build on the node: the run allowlist plus pip settings and proxies."""
    return run_env(base, extra=extra, allow=BUILD_ENV_ALLOW)


# ---- limits -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResourceLimits:
    """Limits applied inside the child before it execs.

    ``memory_bytes`` caps the address space (``RLIMIT_AS``): allocations beyond it fail (Python
    raises ``MemoryError``). ``cpu_count`` pins the child to the first N CPUs this node process may
    use (``sched_setaffinity``). ``max_processes`` caps the processes/threads of the child's uid
    (``RLIMIT_NPROC``; effective when the child runs as a dedicated, non-root uid), so a fork bomb fails
    inside its own run. Each is skipped silently where the platform lacks it.
    """

    memory_bytes: int | None = None
    cpu_count: int | None = None
    max_processes: int | None = None

    def __post_init__(self) -> None:
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise UsageError(f"memory limit must be positive, got {self.memory_bytes}",
                             hint="give memory_bytes in bytes, or None for no limit")
        if self.cpu_count is not None and self.cpu_count <= 0:
            raise UsageError(f"cpu limit must be positive, got {self.cpu_count}",
                             hint="give cpu_count as a number of CPUs, or None for no limit")
        if self.max_processes is not None and self.max_processes <= 0:
            raise UsageError(f"process limit must be positive, got {self.max_processes}",
                             hint="give max_processes as a number of processes, or None for no limit")


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
    nproc: tuple[int, int] | None = None
    if limits.max_processes is not None and hasattr(resource, "RLIMIT_NPROC"):
        _soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
        cap = limits.max_processes if hard == resource.RLIM_INFINITY else min(limits.max_processes, hard)
        nproc = (cap, cap)
    if rlimit is None and cpus is None and nproc is None:
        return None

    def apply() -> None:
        if rlimit is not None:
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(resource.RLIMIT_AS, rlimit)
        if nproc is not None:
            with contextlib.suppress(OSError, ValueError):
                resource.setrlimit(resource.RLIMIT_NPROC, nproc)
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
        for raw in split_lines(pipe):
            if not put((name, raw.decode("utf-8", errors="replace"))):
                return
    except (OSError, ValueError):  # pipe closed under us
        pass
    finally:
        put((name, _EOF))


def split_lines(pipe: IO[bytes], max_line: int = MAX_LINE_BYTES) -> Iterator[bytes]:
    """Yield the lines of ``pipe`` without their endings, reading bounded chunks.

    ``\n``, ``\r\n`` and a lone ``\r`` end a line (a ``\r`` progress bar becomes one line per update;
    an empty segment between two ``\r`` is dropped). A line longer than ``max_line`` bytes comes in pieces
    of ``max_line`` bytes, each but the last followed by ``LINE_SPLIT_MARKER``, so memory stays bounded
    whatever the script prints.
    """
    marker = LINE_SPLIT_MARKER.encode()
    fd = pipe.fileno()
    buf = b""
    after_cr = False
    while True:
        chunk = os.read(fd, _READ_CHUNK)
        if not chunk:
            break
        buf += chunk
        start = 0
        while True:
            nl, cr = buf.find(b"\n", start), buf.find(b"\r", start)
            ends = [i for i in (nl, cr) if i >= 0]
            if not ends:
                break
            i = min(ends)
            line = buf[start:i]
            if buf[i:i + 1] == b"\n":
                if not (after_cr and not line):
                    yield from _pieces(line, max_line, marker)
                after_cr = False
            else:
                if line:
                    yield from _pieces(line, max_line, marker)
                after_cr = True
            start = i + 1
        buf = buf[start:]
        if buf:
            after_cr = False
        while len(buf) > max_line:
            yield buf[:max_line] + marker
            buf = buf[max_line:]
    if buf:
        yield buf


def _pieces(line: bytes, max_line: int, marker: bytes) -> Iterator[bytes]:
    while len(line) > max_line:
        yield line[:max_line] + marker
        line = line[max_line:]
    yield line


class _Tree:
    """The processes belonging to one supervised child: its group plus tracked descendants."""

    def __init__(self, proc: subprocess.Popen[bytes], tag: str, *, wrapped: bool = False) -> None:
        self.proc = proc
        self.wrapped = wrapped
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
        marker = f"{PROCESS_TAG_VAR}={self.tag}".encode()
        for pid in psutil.pids():
            if pid in self.known or pid in (me, self.proc.pid):
                continue
            try:
                # the group is one system call; the tag is a byte search in /proc/<pid>/environ (no parsing:
                # this scan runs at the end of every run and used to cost tens of milliseconds)
                if os.getpgid(pid) == self.pgid or _has_marker(pid, marker):
                    self.known[pid] = psutil.Process(pid)
            except (psutil.Error, OSError):
                continue
        return [p for p in self.known.values() if _alive(p)]

    def signal_all(self, sig: int, procs: list[psutil.Process]) -> None:
        """Send ``sig`` to the whole process group and to each process in ``procs``.

        In a wrapped (sandboxed) tree SIGTERM spares the launchers: killing them would SIGKILL the
        namespace before the script could clean up."""
        spare_launchers = self.wrapped and sig != _signal.SIGKILL
        if not spare_launchers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, sig)
        for p in procs:
            if spare_launchers and _is_launcher(p):
                continue
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)

    def all_dead(self, procs: list[psutil.Process]) -> bool:
        return _exited(self.proc) and not any(_alive(p) for p in procs)


def _is_launcher(p: psutil.Process) -> bool:
    try:
        return bool(p.name() == "bwrap")
    except psutil.Error:
        return True


def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Return when ``proc`` has exited (not reaping it) or after ``timeout`` seconds."""
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd (old kernel, not Linux): a short sleep instead
        time.sleep(min(timeout, 0.005))
        return
    try:
        select.select([fd], [], [], timeout)
    finally:
        os.close(fd)


def _has_marker(pid: int, marker: bytes) -> bool:
    """Does the process's initial environment hold ``marker`` (``NAME=value``) as one whole entry?"""
    with open(f"/proc/{pid}/environ", "rb") as fh:
        env = fh.read()
    return env.startswith(marker + b"\0") or (b"\0" + marker + b"\0") in env or env == marker


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
        return bool(p.is_running() and p.status() != psutil.STATUS_ZOMBIE)
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
    user: int | None = None,
    group: int | None = None,
    wrapped: bool = False,
) -> ProcessResult:
    """Run ``argv`` in ``cwd`` with exactly ``env``, deliver its output, and clean up its process tree.

    ``on_line(stream, line)`` is called with stream ``'stdout'`` or ``'stderr'`` and the decoded line
    (utf-8, undecodable bytes replaced, without the trailing newline), always from the calling
    thread. If ``on_line`` raises, the whole tree is killed at once and the exception propagates.

    ``timeout`` (seconds) and ``cancel`` stop the run: SIGTERM to the tree, SIGKILL after ``grace``
    seconds. After the main child exits, whatever it left running is stopped the same way.

    ``user``/``group`` switch the child to that uid/gid (no supplementary groups) before it execs.
    ``wrapped`` says ``argv[0]`` is a sandbox launcher (bwrap) that runs the command as the init of a pid
    namespace: the launchers get no SIGTERM (they would take the namespace down at once), only the
    script's processes do, then SIGKILL ends everything; an exit status above 128 is reported as the
    signal that ended the script.

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
            user=user,
            group=group if group is not None or user is None else user,
            extra_groups=[] if user is not None else None,
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
    lines: queue.Queue[tuple[str, object]] = queue.Queue(maxsize=512)  # x 64 KiB at most
    stop_readers = threading.Event()
    readers = [
        threading.Thread(target=_reader, args=(name, pipe, lines, stop_readers),
                         name=f"supervise-{proc.pid}-{name}", daemon=True)
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr))
    ]
    for t in readers:
        t.start()

    tree = _Tree(proc, tag, wrapped=wrapped)
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
    deadline = None if timeout is None else started + timeout
    timed_out = canceled = False
    open_streams = 2
    # phases: "run" -> "term" (SIGTERM sent, waiting up to kill_at) -> "drain" (waiting for EOF)
    phase = "run"
    targets: list[psutil.Process] = []
    kill_at = drain_until = 0.0
    next_tree_poll = started + _TREE_POLL  # a run that ends sooner is covered by the final scan
    completed = False
    try:
        while True:
            item: tuple[str, object] | None
            if open_streams == 0:
                # both pipes closed (nothing more can arrive): wait for the child's exit itself, not the next poll
                if not _exited(proc):
                    _wait_exit(proc, _POLL)
                elif phase == "term":
                    time.sleep(_POLL)  # leftovers got SIGTERM: look again in a moment, not in a busy loop
                item = None
            else:
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
    if wrapped and code is not None and 128 < code < 128 + 65:
        code = -(code - 128)  # bwrap reports a signal death of its command as 128 + signal
    return ProcessResult(
        exit_code=code if code is not None and code >= 0 else None,
        signal=-code if code is not None and code < 0 else None,
        timed_out=timed_out,
        canceled=canceled,
        duration=duration,
        stderr_tail=tuple(tail),
        timeout=timeout,
    )
