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
from tasks.process import ProcessResult, ResourceLimits, run_supervised
from tasks.rundir import OutputCaps, OutputWalk, open_regular, read_new
from tasks.sandbox import Sandbox, prepare_dirs, script_env
from tasks.snapshots import check_digest, check_run_id, verified_snapshot


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
    sandbox: Sandbox | None = None  # None: level none, best-effort (library use and unit tests)
    output_caps: OutputCaps = field(default_factory=OutputCaps)

    @property
    def isolation(self) -> str:
        return self.sandbox.level if self.sandbox is not None else "none"


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
    check_run_id(run_id)  # before any key or path is made from it
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
    history = (*record.attempts, {"attempt": attempt_no, "node": cfg.name, "started": time.time(),
                                  "isolation": cfg.isolation})
    record = attempt.write(record.with_status(RunStatus.PREPARING, attempt=attempt_no, node=cfg.name,
                                              attempts=history))
    node.r.delete(layout.rk_run_metrics(run_id))  # a retried attempt starts its metrics afresh
    logs = LogWriter(node.r, run_id, run_dir.parent / f"{run_dir.name}.driver.log")
    logs.system(f"attempt {attempt_no} of run {run_id} on node {cfg.name} (pool {cfg.pool}, "
                f"isolation {cfg.sandbox.describe() if cfg.sandbox else 'none'})")
    result: ProcessResult | None = None
    error: RunError | None = None
    try:
        if attempt.cancel.is_set():
            raise _Canceled()
        refusal = cfg.sandbox.refuses() if cfg.sandbox is not None else None
        if refusal:
            raise ClusterError(refusal, hint="install bubblewrap on the node (apt-get install bubblewrap) or "
                                             "run the node as root; or create the pool with isolation='best-effort'")
        python, argv = _prepare(node, spec, run_dir, logs.system)
        if attempt.cancel.is_set():
            raise _Canceled()
        record = attempt.write(record.with_status(RunStatus.RUNNING, arguments=tuple(argv)))
        logs.system(f"running {' '.join([spec.entry_script, *argv])}")
        channel = run_dir.with_suffix(run_dir.suffix + ".channel")
        channel.mkdir(parents=True, exist_ok=True)
        metrics_file = channel / "metrics.jsonl"
        metrics_file.touch()
        tmp_dir = channel / "tmp"
        prepare_dirs(cfg.sandbox, run_dir, channel, tmp_dir)
        env = script_env(cfg.sandbox, os.environ, python=python, tmp_dir=tmp_dir, extra={},
                         user=dict(spec.environment_variables),
                         channel={"CLUSTER_RUN_ID": run_id, "CLUSTER_RUN_CHANNEL": str(metrics_file),
                                  "CLUSTER_EXPERIMENT": spec.experiment})
        readonly = _readonly_paths(cfg, python, argv)
        launch = (cfg.sandbox.wrap([python, "-u", spec.entry_script, *argv], python=python, run_dir=run_dir,
                                   writable=[channel], readonly=readonly, tmp_dir=tmp_dir, cwd=run_dir)
                  if cfg.sandbox is not None else None)
        with _MetricsTail(node, run_id, metrics_file, attempt, logs.system):
            result = run_supervised(launch.argv if launch else [python, "-u", spec.entry_script, *argv],
                                    cwd=run_dir, env=env, on_line=logs.line, timeout=spec.max_run_duration_seconds,
                                    cancel=attempt.cancel, grace=cfg.grace_seconds, limits=cfg.limits,
                                    user=launch.user if launch else None, group=launch.group if launch else None,
                                    wrapped=launch.wrapped if launch else False)
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
    uploaded, over = _upload_results(node, attempt, spec, run_dir, logs)
    logs.system(f"uploaded {uploaded} file(s) from ./outputs and ./logs")
    if over and error is None:
        error = RunError(kind="user", message=f"./outputs and ./logs hold {over}: the pool's cap "
                                              "(max_output_files / max_output_bytes); the rest was not uploaded")
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
    python = resolve_environment(EnvSpec(spec.pip_packages, spec.conda_packages), cfg.cache_dir / "envs", log=log,
                                 sandbox=cfg.sandbox)
    argv = [_resolve_arg(node, a, run_dir, log) for a in spec.arguments]
    return python, argv


def _snapshot(node: Node, digest: str, log: Callable[[str], None]) -> Path:
    """The extracted snapshot, cached per node by digest and verified against it (see tasks/snapshots.py)."""
    check_digest(digest)
    return verified_snapshot(node.store, digest, node.config.cache_dir / "snapshots", log)


def _readonly_paths(cfg: NodeConfig, python: str, argv: list[str]) -> list[Path]:
    """What a sandboxed script must see read-only besides the system: its environment and mounted data."""
    out: list[Path] = []
    envs = (cfg.cache_dir / "envs").absolute()
    exe = Path(python).absolute()
    if exe.is_relative_to(envs):
        out.append(envs / exe.relative_to(envs).parts[0])
    data = (cfg.cache_dir / "data").absolute()
    for a in argv:
        p = Path(a)
        if p.is_absolute() and p.is_relative_to(data) and p.exists() and p not in out:
            out.append(p)
    return out


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


def _upload_results(node: Node, attempt: _Attempt, spec: RunSpec, run_dir: Path,
                    logs: LogWriter) -> tuple[int, str]:
    """Upload ./outputs and ./logs, trusting nothing in them (tasks/rundir.py); (files uploaded, cap hit or '')."""
    count, caps = 0, node.config.output_caps
    used_files = used_bytes = 0
    for folder in (layout.OUTPUTS_DIR, layout.LOGS_DIR):
        walk = OutputWalk(run_dir, folder, OutputCaps(caps.max_bytes - used_bytes, caps.max_files - used_files),
                          logs.system)
        for key, fh, size in walk:
            attempt.check()
            node.store.put_stream(spec.prefix + key, fh, size)
            count += 1
        used_files += walk.files
        used_bytes += walk.nbytes
        if walk.over:
            return count, walk.over
    return count, ""


METRICS_READ_BYTES = 1024 * 1024  # per poll
METRICS_MAX_BYTES = 256 * 1024 * 1024  # per run
METRICS_MAX_LINE = 1024 * 1024


class _MetricsTail:
    """Tail the per-run channel file into the run's Redis metrics stream; archive them at the end."""

    def __init__(self, node: Node, run_id: str, path: Path, attempt: _Attempt,
                 log: Callable[[str], None] = lambda _m: None) -> None:
        self.node, self.run_id, self.path, self.attempt = node, run_id, path, attempt
        self._log = log
        self.events: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"metrics-{run_id}", daemon=True)
        self._pos = 0
        self._partial = b""
        self._total = 0
        self._dead = False

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
        # The channel is hostile: never follow a link, never block on a FIFO, read a bounded amount.
        if self._dead:
            return
        fd, why = open_regular(self.path)
        if fd is None:
            self._dead = True
            self._log(f"metrics channel ignored from now on: it is {why}")
            return
        try:
            if os.fstat(fd).st_size < self._pos:
                self._pos = 0  # truncated by the script: start over
            chunk = read_new(fd, self._pos, METRICS_READ_BYTES)
        finally:
            os.close(fd)
        if not chunk:
            return
        self._pos += len(chunk)
        self._total += len(chunk)
        if self._total > METRICS_MAX_BYTES:
            self._dead = True
            self._log(f"metrics channel ignored from now on: over {METRICS_MAX_BYTES} bytes")
        if len(self._partial) > METRICS_MAX_LINE:
            self._partial = b""  # an overlong line is no metric
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
