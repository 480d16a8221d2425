"""Run isolation: how a node starts a run's entry script so that it cannot reach the cluster.

Three levels, chosen once when the node starts (``detect``) and reported in its first log line, its
heartbeat (``cluster nodes``) and every attempt of every run (``Run.get_details()``):

``sandbox``  bubblewrap (``bwrap``): new pid, ipc, uts, cgroup (and, for an unprivileged node, user)
             namespaces; a fresh root with only the system directories, the node's Python, the SDK, the
             run's environment and mounted data bound read-only; the run directory, its channel directory
             and a private ``/tmp`` are the only writable places; its own ``/proc``. A root node drops
             the script to a dedicated uid/gid inside the sandbox (``setpriv``), so the process count
             limit applies and files it leaves are not root's.
``uid``      no bwrap, but the node is root: the script runs as the dedicated uid/gid; the config and the
             caches stay readable/writable only by root.
``none``     neither: the script runs as the node's own user. Nothing keeps it from the node's files.

``isolation='required'`` refuses to run a script at level ``none``; ``network='none'`` gives a sandboxed
run a private network namespace (loopback only).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, get_args

from pydantic import Field

from cluster.autoscale import Isolation, Network
from cluster.schema import Record, WholeNumber, record

__all__ = ["ISOLATION_MODES", "LEVELS", "NETWORK_MODES", "Sandbox", "SandboxPolicy", "detect"]

LEVELS = ("sandbox", "uid", "none")
ISOLATION_MODES: tuple[str, ...] = get_args(Isolation)
NETWORK_MODES: tuple[str, ...] = get_args(Network)

#: Base of the dedicated uid/gid range for runs of root nodes (one uid per node name).
RUN_UID_BASE = 61000
RUN_UID_SPAN = 4000

#: Where the SDK (the ``cluster`` package) appears inside the sandbox, on PYTHONPATH.
SDK_DIR = "/opt/cluster-sdk"

_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_OPTIONAL_RO = ("/sys/devices/system/cpu",)


@record
class SandboxPolicy(Record):
    """What a pool asks of its nodes: ``isolation`` ('required'|'best-effort'), ``network`` ('host'|'none'),
    and ``max_processes`` (processes and threads of one run, a fork bomb's ceiling)."""

    __what__ = "sandbox policy"

    isolation: Isolation = "best-effort"
    network: Network = "host"
    max_processes: Annotated[WholeNumber, Field(ge=16)] = 1024


@dataclass(frozen=True)
class Launch:
    """How to start one command: the argv to exec, and the uid/gid to switch to before exec (or None)."""

    argv: list[str]
    user: int | None = None
    group: int | None = None
    wrapped: bool = False  # argv[0] is bwrap: it and the pid namespace's init get SIGKILL only


@dataclass(frozen=True)
class Sandbox:
    """A node's isolation level and how it wraps a command."""

    level: str
    policy: SandboxPolicy
    bwrap: str | None = None
    run_uid: int | None = None
    run_gid: int | None = None
    reason: str = ""
    hidden: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def privileged(self) -> bool:
        return os.geteuid() == 0

    def describe(self) -> str:
        who = f" as uid {self.run_uid}" if self.run_uid is not None else ""
        net = ", private network" if self.level == "sandbox" and self.policy.network == "none" else ""
        extra = f" ({self.reason})" if self.reason else ""
        return f"{self.level}{who}{net}{extra}"

    def refuses(self) -> str | None:
        """Why this node must not run a script (isolation='required' at level none), else None."""
        if self.level == "none" and self.policy.isolation == "required":
            return ("the pool requires isolation but this node has none "
                    f"({self.reason or 'no bwrap and not root'})")
        return None

    def owner(self) -> tuple[int, int] | None:
        """The uid/gid that must own the run's writable directories, or None (the node's own)."""
        if self.run_uid is None or self.run_gid is None:
            return None
        return self.run_uid, self.run_gid

    def wrap(self, argv: list[str], *, python: str, run_dir: Path, writable: Iterable[Path] = (),
             readonly: Iterable[Path] = (), tmp_dir: Path, cwd: Path) -> Launch:
        """The command that runs ``argv`` (whose interpreter is ``python``) at this node's level.

        ``run_dir``, ``writable`` and ``tmp_dir`` (bound at ``/tmp``) are writable; ``readonly`` paths
        (the run's environment, mounted data) are bound read-only at their own paths.
        """
        if self.level == "none":
            return Launch(argv)
        if self.level == "uid":
            return Launch(argv, user=self.run_uid, group=self.run_gid)
        assert self.bwrap is not None
        args = [self.bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc",
                "--unshare-uts", "--unshare-cgroup-try", "--hostname", "run"]
        if not self.privileged:
            args.append("--unshare-user")
        args += ["--unshare-net"] if self.policy.network == "none" else ["--share-net"]
        made: set[str] = {"/"}
        for d in _SYSTEM_DIRS:
            if os.path.islink(d):
                args += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                args += ["--ro-bind", d, d]
            made.add(d)
        for d in _OPTIONAL_RO:
            if os.path.isdir(d):
                args += [*_dirs_for(d, made), "--ro-bind", d, d]
        for d in _python_dirs(python):
            if not _covered(d, made):
                args += [*_dirs_for(d, made), "--ro-bind", d, d]
                made.add(d)
        # The node's state, work and cache directories may lie under a bound directory: hide them.
        for h in self.hidden:
            hs = str(h)
            if any(_under(hs, m) for m in made if m != "/") and os.path.isdir(hs):
                args += ["--tmpfs", hs]
        # the private /tmp first: binds below it (a run directory under /tmp) are made on top of it
        args += ["--bind", str(tmp_dir), "/tmp"]
        made.add("/tmp")
        sdk = _sdk_dir()
        if sdk is not None:
            args += [*_dirs_for(SDK_DIR, made), "--ro-bind", str(sdk), f"{SDK_DIR}/cluster"]
        for p in readonly:
            ps = str(p)
            args += [*_dirs_for(os.path.dirname(ps), made), "--ro-bind", ps, ps]
        for p in (run_dir, *writable):
            ps = str(p)
            args += [*_dirs_for(os.path.dirname(ps), made), "--bind", ps, ps]
        # /dev/shm writable by the run's uid: POSIX semaphores and shared memory (joblib, torch dataloaders)
        args += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--tmpfs", "/dev/shm", "--chdir", str(cwd)]
        if self.privileged and self.run_uid is not None:
            setpriv = shutil.which("setpriv") or "/usr/bin/setpriv"
            args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP", "--",
                     setpriv, f"--reuid={self.run_uid}", f"--regid={self.run_gid}", "--clear-groups",
                     "--inh-caps=-all", "--bounding-set=-all", "--"]
        else:
            args.append("--")
        return Launch([*args, *argv], wrapped=True)

    def python_path(self) -> str | None:
        """PYTHONPATH for the script: the SDK's directory inside the sandbox."""
        return SDK_DIR if self.level == "sandbox" and _sdk_dir() is not None else None


def _under(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _covered(path: str, made: set[str]) -> bool:
    return any(_under(path, m) for m in made if m != "/")


def _dirs_for(path: str, made: set[str]) -> list[str]:
    """``--dir`` (mode 0755) for every ancestor of ``path`` not created yet, so the dropped uid can walk in."""
    out: list[str] = []
    parts = Path(path).parts
    for i in range(2, len(parts) + 1):
        d = "/".join(("", *parts[1:i]))
        if d in made:
            continue
        out += ["--perms", "0755", "--dir", d]
        made.add(d)
    return out


def _python_dirs(python: str) -> list[str]:
    """What the interpreter needs: its installation prefix(es) (a venv and its base)."""
    dirs: list[str] = []
    exe = Path(python)
    candidates = [Path(sys.base_prefix), Path(sys.prefix), Path(sys.exec_prefix)]
    # a run environment (a virtualenv) is passed as readonly by the caller; its base is the node's Python
    if exe.is_absolute():
        candidates.append(Path(os.path.realpath(exe)).parent.parent)
    for c in candidates:
        s = str(c)
        if s not in dirs and s not in ("/", "") and os.path.isdir(s):
            dirs.append(s)
    return dirs


def _sdk_dir() -> Path | None:
    try:
        import cluster
    except ImportError:  # pragma: no cover - the node itself imports cluster
        return None
    return Path(cluster.__file__).resolve().parent


def run_ids_for(node_name: str) -> tuple[int, int]:
    """The dedicated uid/gid of a root node's runs: stable per node name, away from system and user ids."""
    n = RUN_UID_BASE + zlib.crc32(node_name.encode()) % RUN_UID_SPAN
    return n, n


def _probe(argv: list[str]) -> str | None:
    """Run a trivial command in the sandbox; None when it works, else why not."""
    try:
        out = subprocess.run(argv, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
                             env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    if out.returncode != 0:
        return (out.stderr.decode(errors="replace").strip() or f"exit code {out.returncode}")[:300]
    return None


def detect(policy: SandboxPolicy, *, node_name: str, hidden: Iterable[Path] = (),
           bwrap: str | None = None, use_bwrap: bool = True) -> Sandbox:
    """The best level this node can give its runs, checked by actually starting a sandbox."""
    hidden_paths = tuple(Path(os.path.realpath(h)) for h in hidden)
    root = os.geteuid() == 0
    uid, gid = run_ids_for(node_name) if root else (None, None)
    found = bwrap or (shutil.which("bwrap") if use_bwrap else None)
    reason = "bwrap not installed" if use_bwrap else "bwrap disabled"
    if found:
        box = Sandbox("sandbox", policy, bwrap=found, run_uid=uid, run_gid=gid, hidden=hidden_paths)
        tmp = Path(os.environ.get("TMPDIR", "/tmp"))
        probe_dir = Path(_mkdtemp(tmp))
        try:
            if uid is not None and gid is not None:
                os.chown(probe_dir, uid, gid)
            true = shutil.which("true") or "/bin/true"
            launch = box.wrap([true], python=sys.executable, run_dir=probe_dir, tmp_dir=probe_dir, cwd=probe_dir)
            why = _probe(launch.argv)
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)
        if why is None:
            return box
        reason = f"bwrap does not work here: {why}"
    if root and uid is not None:
        why = _probe_uid(uid, gid or uid)
        if why is None:
            return Sandbox("uid", policy, run_uid=uid, run_gid=gid, reason=reason, hidden=hidden_paths)
        return Sandbox("none", policy, reason=f"{reason}; the run uid cannot start this Python ({why})",
                       hidden=hidden_paths)
    return Sandbox("none", policy, reason=reason + "; the node is not root", hidden=hidden_paths)


def _probe_uid(uid: int, gid: int) -> str | None:
    """Can the dedicated uid start the node's Python (e.g. not under a 0700 /root)? None when it can."""
    try:
        out = subprocess.run([sys.executable, "-c", "pass"], capture_output=True, timeout=30, user=uid, group=gid,
                             extra_groups=[], stdin=subprocess.DEVNULL, cwd="/", env={"PATH": "/usr/bin:/bin"})
    except (OSError, subprocess.SubprocessError) as e:
        return str(e)
    return None if out.returncode == 0 else (out.stderr.decode(errors="replace").strip()[-200:] or "failed")


def _mkdtemp(base: Path) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="cluster-probe-", dir=base)


def make_undumpable() -> bool:
    """Make this process non-dumpable: its /proc files (environ, cmdline's memory, fds) become root-only,
    even for processes of the same uid. True on success (Linux only)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_dumpable = 4
        return int(libc.prctl(pr_set_dumpable, 0, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


# ---- running a script -----------------------------------------------------------------------------

def prepare_dirs(box: Sandbox | None, *dirs: Path) -> None:
    """Create the run's writable directories and hand them (recursively) to the run's uid, if it has one."""
    owner = box.owner() if box is not None else None
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
        if owner is None:
            continue
        uid, gid = owner
        os.chown(d, uid, gid, follow_symlinks=False)
        for base, subdirs, files in os.walk(d):
            for name in (*subdirs, *files):
                os.chown(os.path.join(base, name), uid, gid, follow_symlinks=False)


def script_env(box: Sandbox | None, base: dict[str, str] | os._Environ[str], *, python: str, tmp_dir: Path,
               extra: dict[str, str], user: dict[str, str], channel: dict[str, str]) -> dict[str, str]:
    """The script's environment (an allowlist, see ``tasks.process.run_env``) for this node's level."""
    from tasks.process import run_env

    level = box.level if box is not None else "none"
    own: dict[str, str] = {"PYTHONUNBUFFERED": "1"}
    sdk = _sdk_dir()
    if level == "sandbox":
        own |= {"HOME": "/tmp", "TMPDIR": "/tmp",
                "PATH": f"{os.path.dirname(python)}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
        if sdk is not None:
            own["PYTHONPATH"] = SDK_DIR
    else:
        own |= {"HOME": str(tmp_dir), "TMPDIR": str(tmp_dir)}
        if sdk is not None:
            own["PYTHONPATH"] = str(sdk.parent)
    return run_env(base, extra={**own, **extra}, user=user, channel=channel)
