"""What a node does with one run, as a plain function (the Celery task is a thin shell around it).

    claim (lease + attempt) -> Preparing: snapshot, environment, data -> Running: the entry script
    -> Finalizing: outputs, logs, metrics -> Completed | Failed | Canceled

Every state change and every upload is fenced by the lease token: if another attempt took the run over,
this one stops and writes nothing more.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from cluster import layout
from cluster.datareference import DataReference
from cluster.errors import ClusterError
from cluster.logstream import LogWriter
from cluster.metrics import aggregate
from cluster.objectstore import ObjectStore
from cluster.records import RunError, RunRecord, RunSpec, RunStatus
from cluster.redisclient import connect
from cluster.runstate import RunState
from cluster.settings import Settings
from tasks import datacache
from tasks.environment import EnvSpec, resolve_environment
from tasks.extract import safe_extract
from tasks.outputnames import output_key
from tasks.process import ProcessResult, ResourceLimits, run_supervised, scrubbed_env


@dataclass(frozen=True)
class NodeConfig:
    name: str
    pool: str
    work_dir: Path
    cache_dir: Path
    lease_ms: int = 10_000
    renew_seconds: float = 1.0
    grace_seconds: float = 5.0
    limits: ResourceLimits | None = None
    keep_run_dirs: bool = False


@dataclass
class Node:
    """A node's long-lived clients and what it is doing right now (for heartbeats)."""

    settings: Settings
    config: NodeConfig
    r: redis.Redis = field(init=False)
    store: ObjectStore = field(init=False)
    data: ObjectStore = field(init=False)
    state: RunState = field(init=False)
    current_run: str | None = None

    def __post_init__(self) -> None:
        self.r = connect(self.settings)
        self.store = ObjectStore(self.settings, self.settings.cluster_bucket)
        self.data = ObjectStore(self.settings, self.settings.data_bucket, client=self.store.client)
        self.state = RunState(self.store, self.r)


class LeaseLost(Exception):
    """Another attempt holds the run now: stop without writing anything."""


class _Attempt:
    """One attempt at one run: lease renewal, cancel watch, fenced writes."""

    def __init__(self, node: Node, run_id: str, token: str) -> None:
        self.node, self.run_id, self.token = node, run_id, token
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{run_id}", daemon=True)

    def __enter__(self) -> _Attempt:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _renew_loop(self) -> None:
        cfg = self.node.config
        while not self._stop.wait(cfg.renew_seconds):
            try:
                rc = self.node.state.renew(self.run_id, self.token, cfg.lease_ms)
            except (redis.RedisError, OSError):
                continue  # Redis blip: the lease has slack; if it expires we lose the run and stop
            if rc == -1:
                self.lost.set()
                self.cancel.set()
                return
            if rc == 1:
                self.cancel.set()

    def write(self, record: RunRecord) -> RunRecord:
        if self.lost.is_set() or not self.node.state.write(record, self.token):
            self.lost.set()
            raise LeaseLost(self.token)
        return record

    def check(self) -> None:
        if self.lost.is_set() or not self.node.state.holds(self.run_id, self.token):
            self.lost.set()
            raise LeaseLost(self.token)


def execute_run(node: Node, run_id: str) -> str:
    """Run one run on this node. Returns what happened: the final status, or skipped:/lost: reasons."""
    cfg = node.config
    node.r.hincrby(layout.rk_run(run_id), "deliveries", 1)  # every delivery counts; only a claim executes
    claim = node.state.claim(run_id, cfg.name, cfg.lease_ms)
    if claim.outcome != "ok":
        return f"skipped:{claim.outcome}:{claim.token}"
    node.current_run = run_id
    run_dir = cfg.work_dir / "runs" / f"{run_id}.{claim.attempt}"
    try:
        with _Attempt(node, run_id, claim.token) as attempt:
            return _execute(node, attempt, run_id, claim.attempt, run_dir)
    except LeaseLost:
        return "lost:lease"
    finally:
        node.current_run = None
        if not cfg.keep_run_dirs:
            shutil.rmtree(run_dir, ignore_errors=True)
            shutil.rmtree(run_dir.with_suffix(run_dir.suffix + ".channel"), ignore_errors=True)


def _execute(node: Node, attempt: _Attempt, run_id: str, attempt_no: int, run_dir: Path) -> str:
    cfg = node.config
    spec = node.state.spec(run_id)
    record = node.state.record(run_id)
    history = (*record.attempts, {"attempt": attempt_no, "node": cfg.name, "started": time.time()})
    record = attempt.write(record.with_status(RunStatus.PREPARING, attempt=attempt_no, node=cfg.name,
                                              attempts=history))
    node.r.delete(layout.rk_run_metrics(run_id))  # a retried attempt starts its metrics afresh
    logs = LogWriter(node.r, run_id, run_dir.parent / f"{run_dir.name}.driver.log")
    logs.system(f"attempt {attempt_no} of run {run_id} on node {cfg.name} (pool {cfg.pool})")
    result: ProcessResult | None = None
    error: RunError | None = None
    try:
        if attempt.cancel.is_set():
            raise _Canceled()
        python, argv = _prepare(node, spec, run_dir, logs.system)
        if attempt.cancel.is_set():
            raise _Canceled()
        record = attempt.write(record.with_status(RunStatus.RUNNING, arguments=tuple(argv)))
        logs.system(f"running {' '.join([spec.entry_script, *argv])}")
        channel = run_dir.with_suffix(run_dir.suffix + ".channel")
        channel.mkdir(parents=True, exist_ok=True)
        metrics_file = channel / "metrics.jsonl"
        metrics_file.touch()
        env = scrubbed_env(os.environ, extra={
            **spec.environment_variables, "CLUSTER_RUN_ID": run_id, "CLUSTER_RUN_CHANNEL": str(metrics_file),
            "CLUSTER_EXPERIMENT": spec.experiment, "PYTHONUNBUFFERED": "1",
        })
        with _MetricsTail(node, run_id, metrics_file, attempt):
            result = run_supervised([python, "-u", spec.entry_script, *argv], cwd=run_dir, env=env,
                                    on_line=logs.line, timeout=spec.max_run_duration_seconds, cancel=attempt.cancel,
                                    grace=cfg.grace_seconds, limits=cfg.limits)
        attempt.check()
        logs.system(f"entry script ended: {result.describe()} after {result.duration:.1f}s")
    except _Canceled:
        logs.system("canceled before the script started")
    except LeaseLost:
        raise
    except ClusterError as e:
        attempt.check()
        error = RunError(kind="infrastructure", message=str(e))
        logs.system(f"preparation failed: {e}")
    except Exception as e:  # anything unexpected is the node's fault, never silently lost
        attempt.check()
        error = RunError(kind="infrastructure", message=f"{type(e).__name__}: {e}")
        logs.system(f"node error: {type(e).__name__}: {e}")

    record = attempt.write(record.with_status(RunStatus.FINALIZING))
    uploaded = _upload_results(node, attempt, spec, run_dir, logs)
    logs.system(f"uploaded {uploaded} file(s) from ./outputs and ./logs")
    final, error = _final_status(attempt, result, error)
    logs.system(f"final status: {final.value}" + (f" ({error.message})" if error else ""))
    logs.close()
    attempt.check()
    node.store.put_file(spec.prefix + layout.RUN_DRIVER_LOG, logs.path)
    history = (*record.attempts[:-1], {**record.attempts[-1], "ended": time.time(), "outcome": final.value})
    attempt.write(record.with_status(final, error=error, attempts=history))
    return final.value


class _Canceled(Exception):
    pass


def _final_status(attempt: _Attempt, result: ProcessResult | None,
                  error: RunError | None) -> tuple[RunStatus, RunError | None]:
    if error is not None:
        return RunStatus.FAILED, error
    if result is None or result.canceled or attempt.cancel.is_set():
        return RunStatus.CANCELED, None
    if result.timed_out:
        return RunStatus.FAILED, RunError(kind="timeout", message=result.describe(), exit_code=result.exit_code,
                                          signal=result.signal, stderr_tail=result.stderr_tail)
    if result.exit_code == 0:
        return RunStatus.COMPLETED, None
    return RunStatus.FAILED, RunError(kind="user", message=result.describe(), exit_code=result.exit_code,
                                      signal=result.signal, stderr_tail=result.stderr_tail)


def _prepare(node: Node, spec: RunSpec, run_dir: Path, log: Callable[[str], None]) -> tuple[str, list[str]]:
    cfg = node.config
    template = _snapshot(node, spec.snapshot, log)
    shutil.copytree(template, run_dir, symlinks=False)
    os.chmod(run_dir, 0o755)
    (run_dir / "outputs").mkdir(exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    entry = (run_dir / spec.entry_script).resolve()
    if not entry.is_relative_to(run_dir.resolve()) or not entry.is_file():
        raise ClusterError(f"entry script {spec.entry_script!r} is not in the snapshot",
                           hint="entry_script is a path relative to source_directory")
    python = resolve_environment(EnvSpec(spec.pip_packages, spec.conda_packages), cfg.cache_dir / "envs", log=log)
    argv = [_resolve_arg(node, a, run_dir, log) for a in spec.arguments]
    return python, argv


def _snapshot(node: Node, digest: str, log: Callable[[str], None]) -> Path:
    """The extracted snapshot, cached per node by digest (extracted once, then copied per run)."""
    cache = node.config.cache_dir / "snapshots"
    target = cache / digest
    if target.is_dir():
        log(f"snapshot {digest[:12]} reused from the node cache")
        return target
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{digest}.{os.getpid()}.tar.gz"
    node.store.get_file(layout.snapshot_key(digest), archive)
    try:
        tmp = cache / f"{digest}.{os.getpid()}.d"
        shutil.rmtree(tmp, ignore_errors=True)
        files = safe_extract(archive, tmp)
        try:
            tmp.rename(target)
        except OSError:  # another node process on this machine got there first
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        archive.unlink(missing_ok=True)
    log(f"snapshot {digest[:12]} fetched and extracted ({len(files)} files)")
    return target


def _resolve_arg(node: Node, value: Any, run_dir: Path, log: Callable[[str], None]) -> str:
    if DataReference.is_reference(value):
        ref = DataReference.from_dict(value)
        if ref.datastore != layout.DEFAULT_DATASTORE:
            raise ClusterError(f"unknown datastore {ref.datastore!r} in {ref}")
        if ref.mode == "mount":
            return str(datacache.sync_mount(node.data, ref, node.config.cache_dir, log).path)
        return str(datacache.download_copy(node.data, ref, run_dir, log))
    if isinstance(value, bool | int | float | str):
        return str(value)
    return json.dumps(value)


def _upload_results(node: Node, attempt: _Attempt, spec: RunSpec, run_dir: Path, logs: LogWriter) -> int:
    count = 0
    taken: set[str] = set()
    for folder in (layout.OUTPUTS_DIR, layout.LOGS_DIR):
        base = run_dir / folder
        if not base.is_dir():
            continue
        for path in sorted(p for p in base.rglob("*") if p.is_file() and not p.is_symlink()):
            attempt.check()
            key, renamed = output_key(path.relative_to(run_dir), taken)  # odd names are escaped, not fatal
            if renamed:
                logs.system(renamed)
            node.store.put_file(spec.prefix + key, path)
            count += 1
    return count


class _MetricsTail:
    """Tail the per-run channel file into the run's Redis metrics stream; archive them at the end."""

    def __init__(self, node: Node, run_id: str, path: Path, attempt: _Attempt) -> None:
        self.node, self.run_id, self.path, self.attempt = node, run_id, path, attempt
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"metrics-{run_id}", daemon=True)
        self._pos = 0
        self._partial = b""

    def __enter__(self) -> _MetricsTail:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()
        if not self.attempt.lost.is_set():
            prefix = self.node.state.prefix(self.run_id)
            self.node.store.put_json(prefix + layout.RUN_METRICS,
                                     {"events": self.events, "metrics": aggregate(self.events)})

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._drain()

    def _drain(self) -> None:
        with open(self.path, "rb") as fh:
            fh.seek(self._pos)
            chunk = fh.read()
        if not chunk:
            return
        self._pos += len(chunk)
        data = self._partial + chunk
        *lines, self._partial = data.split(b"\n")
        new = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and {"name", "kind", "value"} <= event.keys():
                new.append(event)
        if not new or self.attempt.lost.is_set():
            return
        self.events.extend(new)
        pipe = self.node.r.pipeline(transaction=False)
        key = layout.rk_run_metrics(self.run_id)
        for event in new:
            pipe.xadd(key, {"e": json.dumps(event)})
        pipe.execute()
