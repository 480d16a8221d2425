"""Fixtures for remote runs end to end: a Workspace on the session's embedded cluster (real Redis, real S3
server) and real worker node processes (`python -m cluster.cli worker`), one pool per test module.

Nodes are started as subprocesses in their own session; teardown sends SIGTERM, then SIGKILL after a grace
period, kills anything the node left behind (a run's script runs in its own session) and waits, so no
process survives a test module.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from cluster import Workspace
from cluster.settings import Settings
from tests.helpers import EventCollector, NodeProcess, NodeStarter, unique

REPO = Path(__file__).resolve().parents[2]
__all__ = ["REPO", "NodeProcess", "NodeStarter"]  # the node factory lives in tests/helpers.py (one for every tier)






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
