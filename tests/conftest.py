"""Shared fixtures. Integration tests run against a real embedded cluster (real Redis, real S3 server)
started on free ports in a temporary folder and stopped afterwards.

A missing server binary skips those tests locally but fails them in CI (CI=true)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import embedded
from cluster.errors import MissingBinaryError
from cluster.settings import Settings

IN_CI = os.environ.get("CI", "").lower() == "true"
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def skip_or_fail(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing prerequisite is a failure, not a skip)")
    pytest.skip(reason)


def _embedded_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    try:
        embedded.find_redis_server()
        embedded.find_object_store()
    except MissingBinaryError as e:
        skip_or_fail(str(e))
    state_dir = tmp_path_factory.mktemp("cluster") / ".cluster"
    embedded.up(state_dir, echo=lambda _m: None)
    try:
        yield state_dir
    finally:
        embedded.down(state_dir, echo=lambda _m: None)


@pytest.fixture(scope="session")
def cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running embedded cluster for the whole session; yields its state dir."""
    yield from _embedded_cluster(tmp_path_factory)


@pytest.fixture(scope="module")
def own_cluster_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A cluster of the test module's own, for destructive tests (a Redis FLUSHALL must not reach other modules'
    runs): a module overrides ``cluster_dir`` and ``settings`` with :func:`tests.helpers.use_own_cluster`, and
    its own ``ws``."""
    yield from _embedded_cluster(tmp_path_factory)


@pytest.fixture(scope="session")
def settings(cluster_dir: Path) -> Settings:
    return Settings.from_file(cluster_dir / "config.json")


@pytest.fixture
def mnist_dir() -> Path:
    """Real MNIST: ``$MNIST_DIR``, else the shared copy next to the repository."""
    path = Path(os.environ.get("MNIST_DIR") or SHARED_MNIST)
    if not (path / "SHA256SUMS").exists():
        skip_or_fail(f"real MNIST not found at {path} (set MNIST_DIR)")
    return path
