"""Helpers for the dashboard tests (fixtures are in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """wait_until, with a slower interval for page queries."""
    return wait_until(predicate, timeout, what, interval=0.2)


def make_finished_runs(ws: Workspace, experiment: str, count: int, *, threads: int = 8) -> list[str]:
    """``count`` Completed runs written straight to the object store the way a node leaves them (spec, record,
    metrics.json, index entry) -- for listing tests and the benchmark, without executing anything."""
    from concurrent.futures import ThreadPoolExecutor

    from cluster import layout
    from cluster.experiment import new_run_id
    from cluster.records import RunRecord, RunSpec, RunStatus

    def one(i: int) -> str:
        run_id = new_run_id(experiment)
        prefix = layout.run_prefix(experiment, run_id)
        spec = RunSpec(run_id=run_id, experiment=experiment, snapshot="0" * 64, entry_script="train.py",
                       arguments=("--i", str(i)), tags={"i": str(i)}, prefix=prefix)
        t = 1_700_000_000.0 + i
        record = RunRecord(run_id=run_id, experiment=experiment, status=RunStatus.QUEUED, prefix=prefix,
                           tags={"i": str(i)}, arguments=("--i", str(i)), node="bench-node", attempt=1)
        for status, dt in ((RunStatus.QUEUED, 0), (RunStatus.PREPARING, 1), (RunStatus.RUNNING, 2),
                           (RunStatus.FINALIZING, 9), (RunStatus.COMPLETED, 10)):
            record = record.with_status(status, at=t + dt)
        events = [{"name": "accuracy", "kind": "scalar", "value": 0.5 + (i % 97) / 200, "t": t + s} for s in range(3)]
        events.append({"name": "lr", "kind": "scalar", "value": 0.001 * (i % 10 + 1), "t": t})
        ws.store.put_json(prefix + layout.RUN_SPEC, spec.to_dict())
        ws.store.put_json(prefix + layout.RUN_RECORD, record.to_dict())
        ws.store.put_json(prefix + layout.RUN_METRICS, {"events": events})
        ws.store.put_bytes(layout.run_index_key(run_id), prefix.encode(), content_type="text/plain")
        return run_id

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(count)))
