"""Small helpers shared by the test tiers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from cluster import Workspace, embedded, layout
from cluster.settings import Settings

REPO = Path(__file__).resolve().parents[1]
NODE_START_TIMEOUT = 60.0
NODE_STOP_GRACE = 20.0


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
               interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def use_own_cluster() -> tuple[Any, Any]:
    """The ``cluster_dir`` and ``settings`` fixtures of a module that runs on a cluster of its own
    (``own_cluster_dir``, for destructive tests): ``cluster_dir, settings = use_own_cluster()`` at module level
    overrides the session's two. The module's ``ws`` must then be module- or function-scoped too."""

    @pytest.fixture(scope="module", name="cluster_dir")
    def cluster_dir(own_cluster_dir: Path) -> Path:
        return own_cluster_dir

    @pytest.fixture(scope="module", name="settings")
    def settings(cluster_dir: Path) -> Settings:
        return Settings.from_file(cluster_dir / "config.json")

    return cluster_dir, settings


def unique(prefix: str) -> str:
    """A name no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class EventCollector:
    """Where test scripts report what they did, over HTTP on loopback (a sandboxed run cannot write outside its
    run directory, but keeps the host's network): ``POST /<kind>/<run_id>/<pid>`` records an event,
    ``GET /count/<kind>`` answers how many of that kind were recorded. ``lines()`` gives them as
    ``"<kind> <run_id> <pid>"``, in arrival order."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        events: list[str] = []
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _reply(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    events.append(" ".join(self.path.strip("/").split("/")))
                self._reply(b"ok")

            def do_GET(self) -> None:
                kind = self.path.rsplit("/", 1)[-1]
                with lock:
                    n = sum(1 for e in events if e.split(" ", 1)[0] == kind)
                self._reply(str(n).encode())

        self._events, self._lock = events, lock
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def lines(self, kind: str | None = None) -> list[str]:
        with self._lock:
            return [e for e in self._events if kind is None or e.split(" ", 1)[0] == kind]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---- the node factory: every tier starts worker nodes this way ------------------------------------

@dataclass
class NodeProcess:
    """One worker node started by a test: its process, name, pool and directories."""

    name: str
    pool: str
    proc: subprocess.Popen[bytes]
    work_dir: Path
    cache_dir: Path
    log: Path
    descendants: dict[int, psutil.Process] = field(default_factory=dict)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def remember_descendants(self) -> None:
        try:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                self.descendants.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def stop(self, grace: float = NODE_STOP_GRACE) -> None:
        """SIGTERM, then SIGKILL; then kill whatever it started and left; wait for all of it."""
        self.remember_descendants()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.remember_descendants()
                self.proc.kill()
                self.proc.wait(10)
        leftovers = [p for p in self.descendants.values() if _alive(p)]
        for p in leftovers:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(leftovers, timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class NodeStarter:
    """Starts worker nodes for a pool and stops every one of them at teardown."""

    def __init__(self, settings: Settings, cluster_dir: Path, base: Path) -> None:
        self.settings = settings
        self.config = embedded.role_config(cluster_dir, "node")  # nodes get the node's credentials only
        self.base = base
        self.nodes: list[NodeProcess] = []
        self._redis = Workspace(settings).redis

    def start(self, pool: str, *, name: str | None = None, cache_dir: Path | None = None,
              extra_env: Mapping[str, str] | None = None, wait: bool = True,
              extra_args: tuple[str, ...] = (), config: Path | None = None,
              env: Mapping[str, str] | None = None) -> NodeProcess:
        """`cluster worker` for ``pool`` as a subprocess in its own session (with the node's credentials unless
        ``config`` names another file; this process's environment unless ``env`` replaces it)."""
        name = name or unique(f"node-{pool}")
        work_dir = self.base / name / "work"
        cache = cache_dir or self.base / name / "cache"
        log = self.base / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "cluster.cli", "worker", "--pool", pool, "--node-name", name,
                "--config", str(config or self.config), "--work-dir", str(work_dir), "--cache-dir", str(cache),
                *extra_args]
        full_env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=REPO, env=full_env, start_new_session=True)
        node = NodeProcess(name=name, pool=pool, proc=proc, work_dir=work_dir, cache_dir=cache, log=log)
        self.nodes.append(node)
        if wait:
            self.wait_ready(node)
        return node

    def wait_ready(self, node: NodeProcess, timeout: float = NODE_START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        key = layout.rk_node(node.name)
        while not self._redis.exists(key):
            if node.proc.poll() is not None:
                pytest.fail(f"node {node.name} exited with {node.proc.returncode}:\n{node.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"node {node.name} wrote no heartbeat within {timeout}s:\n{node.log_text()[-3000:]}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        self.nodes.clear()
