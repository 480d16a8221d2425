"""Unit-tier fixtures: a workspace on in-memory services (cluster/testing.py), no server anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.testing import MemoryBroker, MemoryObjectStore, memory_workspace
from cluster.workspace import Workspace


@pytest.fixture
def mem_ws() -> Workspace:
    return memory_workspace()


@pytest.fixture
def broker(mem_ws: Workspace) -> MemoryBroker:
    assert isinstance(mem_ws.broker, MemoryBroker)
    return mem_ws.broker


@pytest.fixture
def store(mem_ws: Workspace) -> MemoryObjectStore:
    assert isinstance(mem_ws.store, MemoryObjectStore)
    return mem_ws.store


@pytest.fixture
def train_dir(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("print('hello')\n")
    return src
