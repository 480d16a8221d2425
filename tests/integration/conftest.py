"""Fixtures for remote runs end to end: a Workspace on the session's embedded cluster (real Redis, real S3
server) and real worker node processes (`python -m cluster.cli worker`), one pool per test module.

Nodes are started as subprocesses in their own session; teardown sends SIGTERM, then SIGKILL after a grace
period, kills anything the node left behind (a run's script runs in its own session) and waits, so no
process survives a test module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from cluster import Workspace, embedded, layout
from cluster.settings import Settings
from tests.helpers import EventCollector, unique

REPO = Path(__file__).resolve().parents[2]
NODE_START_TIMEOUT = 60.0
NODE_STOP_GRACE = 20.0






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
              extra_args: tuple[str, ...] = ()) -> NodeProcess:
        name = name or unique(f"node-{pool}")
        work_dir = self.base / name / "work"
        cache = cache_dir or self.base / name / "cache"
        log = self.base / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "cluster.cli", "worker", "--pool", pool, "--node-name", name,
                "--config", str(self.config), "--work-dir", str(work_dir), "--cache-dir", str(cache), *extra_args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=REPO, env=env, start_new_session=True)
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


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def ws(settings: Settings) -> Workspace:
    """The SDK's entry point on the session cluster."""
    return Workspace(settings)


@pytest.fixture(scope="module")
def pool() -> str:
    """A pool name no other test module uses (so runs never land on another module's node)."""
    return unique("it")


@pytest.fixture(scope="module")
def nodes(settings: Settings, cluster_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeStarter]:
    """Start more nodes in a test (e.g. for a pool that had none); all are stopped when the module ends."""
    starter = NodeStarter(settings, cluster_dir, tmp_path_factory.mktemp("nodes"))
    try:
        yield starter
    finally:
        starter.stop_all()


@pytest.fixture(scope="module")
def node(nodes: NodeStarter, pool: str) -> NodeProcess:
    """One worker node serving the module's pool; its heartbeat key exists when this returns.

    Its environment carries fake secrets, so tests can check that a run's script never sees them."""
    return nodes.start(pool, extra_env=FAKE_NODE_SECRETS)


@pytest.fixture(scope="session")
def node_secrets() -> dict[str, str]:
    """Fake secrets in every module node's environment: a run's script must see none of them."""
    return dict(FAKE_NODE_SECRETS)


FAKE_NODE_SECRETS = {
    "AWS_SECRET_ACCESS_KEY": "fake-aws-secret-1f2e3d",
    "MY_DB_PASSWORD": "fake-db-password-4c5b6a",
    "SERVICE_API_TOKEN": "fake-api-token-9a8b7c",
}


def write_source(root: Path, files: Mapping[str, str]) -> Path:
    """Write a small source directory: ``{relative path: text}`` (dedented)."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


@pytest.fixture
def make_source(tmp_path: Path) -> Callable[..., Path]:
    """``make_source({"train.py": "..."}, name="src")`` -> a fresh source directory under tmp_path."""
    counter = iter(range(1_000_000))

    def make(files: Mapping[str, str] | str, name: str | None = None) -> Path:
        if isinstance(files, str):
            files = {"train.py": files}
        return write_source(tmp_path / (name or f"src{next(counter)}"), files)

    return make


@pytest.fixture
def events() -> Iterator[EventCollector]:
    """Where a test's scripts report what they did (over loopback HTTP: a sandboxed run sees no test folder)."""
    collector = EventCollector()
    yield collector
    collector.close()
