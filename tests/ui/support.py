"""Helpers for the dashboard tests (fixtures are in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cluster import Experiment, ScriptRunConfig, Workspace
from tests.helpers import unique, wait_until


@dataclass(frozen=True)
class Dashboard:
    url: str  # http://127.0.0.1:PORT/ (trailing slash)
    token: str

    @property
    def base(self) -> str:
        return self.url.rstrip("/")

    def login_url(self, path: str = "/") -> str:
        return f"{self.base}{path}?token={self.token}"


def submit(ws: Workspace, pool: str, source: Path, *, arguments: list[Any] | None = None, experiment: str | None = None,
           tags: dict[str, str] | None = None) -> Any:
    config = ScriptRunConfig(source_directory=str(source), script="train.py", arguments=arguments or [],
                             compute_target=pool)
    return Experiment(ws, experiment or unique("ui")).submit(config, tags=tags)


def wait_status(run: Any, statuses: set[str], timeout: float = 90.0) -> str:
    return str(wait_until(lambda: run.get_status() if run.get_status() in statuses else None, timeout=timeout,
                          what=f"run {run.id} to reach {statuses}"))



def poll(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Like wait_until, with a slower interval for page queries."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)
