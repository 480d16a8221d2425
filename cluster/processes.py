"""The embedded cluster's process records: which processes `cluster up` (and the controller, the dashboard) started,
in ``<state dir>/state.json``, identified by pid *and* start time so a recycled pid is never touched; how they are
started (each in its own session, output to ``logs/<name>.log``), and the small helpers every service uses
(free ports, private files). :mod:`cluster.embedded` starts the servers with these; the dashboard's service
(:mod:`cluster.ui.service`) and the local provider record their processes here too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import psutil

from cluster.errors import MissingBinaryError, ServiceError

HOST = "127.0.0.1"
STATE_FILE = "state.json"
# Children we started stay referenced: they outlive the call that started them (and, for `cluster up`,
# the whole CLI process); `down` stops them by pid + start time.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ManagedProcess:
    """A process `up` started: identified by pid and start time so a recycled pid is never touched."""

    name: str
    pid: int
    create_time: float
    argv: list[str]
    log: str

    def process(self) -> psutil.Process | None:
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 0.01 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
            return proc
        except psutil.Error:
            return None

    @property
    def alive(self) -> bool:
        return self.process() is not None


@dataclass
class State:
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[ManagedProcess] = field(default_factory=list)
    object_store: str = ""

    @classmethod
    def load(cls, state_dir: Path) -> State:
        path = state_dir / STATE_FILE
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        return cls(ports=data.get("ports", {}), object_store=data.get("object_store", ""),
                   processes=[ManagedProcess(**p) for p in data.get("processes", [])])

    def save(self, state_dir: Path) -> None:
        data = {"ports": self.ports, "object_store": self.object_store,
                "processes": [asdict(p) for p in self.processes]}
        write_private(state_dir / STATE_FILE, json.dumps(data, indent=2))


# ---- ports ---------------------------------------------------------------------------------------

def port_free(port: int, host: str = HOST) -> bool:
    """Could a server listen on it? (SO_REUSEADDR, as Redis and Go servers set it: connections of a server that
    just died, in TIME_WAIT, do not make its port busy; another listener does.)"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(avoid: Iterable[int] = ()) -> int:
    avoid = set(avoid)
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        # weed derives nothing from ports we pass, but keep clear of the +10000 gRPC convention
        if port not in avoid and port + 10000 < 65536:
            return port
    raise ServiceError("could not find a free TCP port on 127.0.0.1")


# ---- the record ----------------------------------------------------------------------------------

@contextlib.contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    with open(Path(state_dir) / ".state.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def add_process(state_dir: Path, proc: ManagedProcess) -> None:
    """Record another process (a node, the controller) so that `down` stops it too."""
    with state_lock(state_dir):
        state = State.load(state_dir)
        state.processes.append(proc)
        state.save(state_dir)


def replace_process(state_dir: Path, pid: int, *, name: str, argv: list[str]) -> None:
    """A recorded process took on another role (a warm spare became a node): same pid, new name and argv."""
    with state_lock(state_dir):
        state = State.load(state_dir)
        state.processes = [replace(p, name=name, argv=argv) if p.pid == pid else p for p in state.processes]
        state.save(state_dir)


def remove_process(state_dir: Path, pid: int) -> None:
    with state_lock(state_dir):
        state = State.load(state_dir)
        state.processes = [p for p in state.processes if p.pid != pid]
        state.save(state_dir)


def reap(pid: int, timeout: float = 0.0) -> None:
    """Collect the exit status of a child we started once it has exited (no zombies); wait up to ``timeout``."""
    child = _CHILDREN.get(pid)
    if child is None:
        return
    try:
        child.wait(timeout) if timeout else child.poll()
    except subprocess.TimeoutExpired:
        return
    if child.returncode is not None:
        _CHILDREN.pop(pid, None)


def running_process(state_dir: Path, name: str) -> ManagedProcess | None:
    """The live process of ours with this name, if any."""
    return next((p for p in State.load(Path(state_dir)).processes if p.name == name and p.alive), None)


def spawn(name: str, argv: list[str], state_dir: Path, *, env: dict[str, str] | None = None) -> ManagedProcess:
    """Start a long-running child in its own session, output to .cluster/logs/<name>.log."""
    log_path = state_dir / "logs" / f"{name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=state_dir, env=env, start_new_session=True)
        except OSError as e:
            raise MissingBinaryError(f"cannot start {name} ({argv[0]}): {e}") from e
    _CHILDREN[proc.pid] = proc
    create_time = psutil.Process(proc.pid).create_time()
    return ManagedProcess(name=name, pid=proc.pid, create_time=create_time, argv=argv, log=str(log_path))


def forget_dead(state_dir: Path, name: str) -> None:
    """Drop the records of dead processes called ``name`` (so the record names only the live one)."""
    with state_lock(state_dir):
        state = State.load(state_dir)
        state.processes = [p for p in state.processes if p.name != name or p.alive]
        state.save(state_dir)


def write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    tmp.replace(path)
