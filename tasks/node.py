"""What a node does with one run, as a plain function (the Celery task is a thin shell around it).

    claim (lease + attempt) -> Preparing: snapshot, environment, data -> Running: the entry script
    -> Finalizing: outputs, logs, metrics -> Completed | Failed | Canceled

Every state change and every upload is fenced by the lease token: if another attempt took the run over,
this one stops and writes nothing more.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import redis
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay, wait_exponential

from cluster import layout, luascript
from cluster.datareference import DataReference
from cluster.errors import ClusterError, CredentialsError, ServiceError
from cluster.logstream import LogWriter
from cluster.metrics import aggregate, declared_failure
from cluster.objectstore import ObjectStore
from cluster.records import RunError, RunRecord, RunSpec, RunStatus
from cluster.redisclient import connect
from cluster.runstate import Claim, RunState
from cluster.settings import Settings
from tasks import cachegc, checkpoints, datacache, provenance
from tasks.environment import EnvSpec, resolve_environment
from tasks.leftovers import runs_dir
from tasks.process import ProcessResult, ResourceLimits, run_supervised
from tasks.rundir import OutputCaps, OutputWalk, open_regular, read_new, remove_tree
from tasks.sandbox import Sandbox, prepare_dirs, script_env
from tasks.snapshots import check_digest, check_run_id, verified_snapshot

T = TypeVar("T")


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
    storage_retry_seconds: float = 180.0  # finalization retries storage errors this long, then fails the run
    stop_grace_seconds: float = 5.0  # after SIGTERM, how long a running script may go on before it is stopped
    sandbox: Sandbox | None = None  # None: level none, best-effort (library use and unit tests)
    output_caps: OutputCaps = field(default_factory=OutputCaps)
    max_cache_bytes: int = cachegc.DEFAULT_MAX_BYTES  # the pool's cap on this node's cache (LRU pruned)
    cluster_tag: str = "local"  # which cluster (tasks/leftovers.py): run folders and scripts are told apart by it
    prune_every_seconds: float = 30.0
    checkpoint_seconds: float = checkpoints.DEFAULT_SECONDS  # ./outputs/checkpoints upload period (a pool setting)

    @property
    def isolation(self) -> str:
        return self.sandbox.level if self.sandbox is not None else "none"


#: Thread-pool variables of the BLAS/OpenMP libraries; the node sets each to its size's CPU count unless the
#: run's own environment_variables set it (so two 1-CPU nodes on one host do not each start a thread per core).
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "NUMEXPR_NUM_THREADS")


def thread_env(cpus: int | None, user_env: dict[str, str]) -> dict[str, str]:
    """The thread-count variables a run gets: ``cpus`` each (the node's size), except those the run sets."""
    count = cpus if cpus else len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {var: str(count or 1) for var in THREAD_VARS if var not in user_env}


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
    #: set when the node is asked to stop (SIGTERM: pod eviction, host shutdown, `cluster down`): a running
    #: run gets ``stop_grace_seconds`` to end by itself, then is stopped and handed back to the queue
    stopping: threading.Event = field(default_factory=threading.Event)
    #: object-store writes taken off a run's critical path (intermediate run.json, archives, clean-up)
    background: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.r = connect(self.settings)
        self.store = ObjectStore(self.settings, self.settings.cluster_bucket)
        self.data = ObjectStore(self.settings, self.settings.data_bucket, client=self.store.client)
        self.state = RunState(self.store, self.r)
        # lease renewals on a client of their own that waits at most a third of the lease for an answer: a cut
        # link must not block the renewal loop (and so the node's self-fencing) for Redis' usual 30 s
        renew_timeout = max(1.0, self.config.lease_ms / 3000)
        self.renewals = RunState(self.store, connect(self.settings, check=False, socket_timeout=renew_timeout))
        self.background = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"node-{self.config.name}")
        self._last_prune = 0.0

    def prune_cache(self) -> None:
        """Keep the node cache under the pool's cap (least recently used entries no run holds go first); in the
        background, at most every ``prune_every_seconds``."""
        if time.monotonic() - self._last_prune < self.config.prune_every_seconds:
            return
        self._last_prune = time.monotonic()

        def prune() -> None:
            try:
                cachegc.prune(self.config.cache_dir, self.config.max_cache_bytes,
                              lambda m: print(f"node {self.config.name}: {m}", flush=True))
            except OSError as e:
                print(f"node {self.config.name}: pruning the cache failed: {e}", flush=True)

        self.background.submit(prune)


class LeaseLost(Exception):
    """Another attempt holds the run now: stop without writing anything."""


class NodeStopped(Exception):
    """This node was asked to stop mid-run: the attempt is recorded as node-stopped, the run is Queued again and
    its message goes back to the queue for another node."""


class Redeliver(Exception):
    """Redis or the object store failed before this node started the run: hand the message back to the queue
    (not acknowledged) so this node or another tries again; nothing about the run changed."""


class _Attempt:
    """One attempt at one run: lease renewal, cancel watch, fenced writes."""

    def __init__(self, node: Node, run_id: str, token: str) -> None:
        self.node, self.run_id, self.token = node, run_id, token
        self.cancel = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{run_id}", daemon=True)
        self._stored: Future[None] | None = None  # the last intermediate run.json write, if any
        self.done = False  # the final record is written: the lease was released with it
        self.node_stopped = False  # the node is stopping: the script was stopped, the run goes back to the queue
        self._stop_asked: float | None = None
        self._last_renewal = time.monotonic()
        self.uses = contextlib.ExitStack()  # node cache entries this attempt holds in use (tasks/cachegc.py)
        self.logs: LogWriter | None = None

    def __enter__(self) -> _Attempt:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.logs is not None and not self.logs.done:  # whatever ended the attempt, its log is closed
            with contextlib.suppress(Exception):  # (fenced: a lost attempt's close writes nothing)
                self.logs.close()
        self.uses.close()
        self._stop.set()
        self._thread.join()

    def _renew_loop(self) -> None:
        cfg = self.node.config
        while not self._stop.wait(cfg.renew_seconds):
            if self.done:
                return
            if time.monotonic() - self._last_renewal >= cfg.lease_ms / 1000:
                # Self-fencing: not renewed for a whole lease period (Redis unreachable, or this process was
                # stopped): the controller may have given the run to another node. Stop the script, write nothing.
                self.lost.set()
                self.cancel.set()
                return
            try:
                rc = self.node.renewals.renew(self.run_id, self.token, cfg.lease_ms)
            except (redis.RedisError, OSError):
                continue  # Redis blip: the lease has slack; past it, the check above fences us
            if rc != -1:
                self._last_renewal = time.monotonic()
            if self.node.stopping.is_set() and not self.node_stopped:
                self._stop_asked = self._stop_asked or time.monotonic()
                if time.monotonic() - self._stop_asked >= cfg.stop_grace_seconds:
                    self.node_stopped = True
                    self.cancel.set()  # the script's whole process tree: TERM, grace, KILL
            if rc == -1:
                self.lost.set()
                self.cancel.set()
                return
            if rc == 1:
                self.cancel.set()

    def write(self, record: RunRecord, *, durable: bool = True) -> RunRecord:
        """Fenced write of the run's record. Intermediate statuses (``durable=False``) are atomic in Redis at
        once and reach run.json in the background, in order; a durable write waits for those first, so the
        object store never goes back to an older status. Only non-final statuses may skip the wait: Redis
        is their home, and after a Redis wipe any non-final run is re-queued from run.json alike."""
        if self.lost.is_set():
            raise LeaseLost(self.token)
        if durable:
            self._wait_stored()
        if not self.node.state.write(record, self.token, store=durable):
            self.lost.set()
            raise LeaseLost(self.token)
        if not durable:
            previous = self._stored

            def store() -> None:
                if previous is not None:
                    previous.exception()  # keep the order; a failed intermediate write is superseded
                self.node.state.store_record(record)

            self._stored = self.node.background.submit(store)
        return record

    def finish(self, record: RunRecord, retry: Callable[[Callable[[], Any]], Any]) -> None:
        """The final record: atomically in Redis (which releases the lease), then run.json, each retried on
        storage errors; the Redis write is attempted once more only if it may not have arrived."""
        self._wait_stored()

        def fenced() -> None:
            if self.lost.is_set():
                raise LeaseLost(self.token)
            if not self.node.state.write(record, self.token, store=False):
                if self.node.state.live_record_is(record):  # a retry after our own write arrived
                    return
                self.lost.set()
                raise LeaseLost(self.token)

        retry(fenced)
        self.done = True  # the lease is released: renewals stop, nothing more is ours to write
        retry(lambda: self.node.state.store_record(record))

    def _wait_stored(self) -> None:
        if self._stored is not None:
            self._stored.exception()  # its failure does not matter: this write supersedes it
            self._stored = None

    def check(self) -> None:
        """Raise LeaseLost unless this attempt still holds the run. Redis unreachable: the renewal loop decides
        (it fences the attempt once a whole lease period passed without a renewal); until then, we hold it."""
        if self.lost.is_set():
            raise LeaseLost(self.token)
        try:
            held = self.node.renewals.holds(self.run_id, self.token)
        except (redis.RedisError, OSError):
            held = time.monotonic() - self._last_renewal < self.node.config.lease_ms / 1000
        if not held:
            self.lost.set()
            raise LeaseLost(self.token)


def execute_run(node: Node, run_id: str) -> str:
    """Run one run on this node. Returns what happened: the final status, or skipped:/lost: reasons."""
    cfg = node.config
    check_run_id(run_id)  # before any key or path is made from it
    clock = _Clock()
    claim: Claim | None = None
    try:
        claim = node.state.claim(run_id, cfg.name, cfg.lease_ms)  # also counts the delivery; only a claim executes
        if claim.outcome == "ok" and claim.spec is None:  # re-seeded from run.json: read the spec there
            claim = replace(claim, spec=node.state.spec(run_id))
    except Exception as e:
        if not _transient(e):
            raise
        if claim is not None and claim.outcome == "ok":
            with contextlib.suppress(Exception):
                node.state.release(run_id, claim.token)
        raise Redeliver(f"run {run_id}: {_describe(e)}") from e
    clock.mark("claim")
    if claim.outcome != "ok":
        return f"skipped:{claim.outcome}:{claim.token}"
    node.current_run = run_id
    run_dir = runs_dir(cfg.work_dir, cfg.cluster_tag) / f"{run_id}.{claim.attempt}"
    try:
        with _Attempt(node, run_id, claim.token) as attempt:
            return _execute(node, attempt, claim, run_dir, clock)
    except LeaseLost:
        return "lost:lease"
    finally:
        node.current_run = None
        if not cfg.keep_run_dirs:
            remove_tree(run_dir)  # whatever the run did to it (chmod 000 folders, links)
            remove_tree(run_dir.with_suffix(run_dir.suffix + ".channel"))
            with contextlib.suppress(OSError):  # the local copy of the log (archived with the attempt)
                (run_dir.parent / f"{run_dir.name}.driver.log").unlink()
        node.prune_cache()


class _Clock:
    """Where an attempt's time goes, phase by phase (seconds), kept in its history entry as ``phases``."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._last = time.monotonic()

    def mark(self, phase: str) -> None:
        now = time.monotonic()
        self.phases[phase] = round(self.phases.get(phase, 0.0) + now - self._last, 6)
        self._last = now


def _execute(node: Node, attempt: _Attempt, claim: Claim, run_dir: Path, clock: _Clock) -> str:
    cfg = node.config
    run_id, attempt_no = attempt.run_id, claim.attempt
    assert claim.spec is not None and claim.record is not None  # execute_run read them, or redelivered
    spec, record = claim.spec, claim.record  # the claim also reset the live metrics of a retried attempt
    history = (*record.attempts, {"attempt": attempt_no, "node": cfg.name, "started": time.time(),
                                  "isolation": cfg.isolation, "host": socket.gethostname()})
    record = attempt.write(record.with_status(RunStatus.PREPARING, attempt=attempt_no, node=cfg.name,
                                              attempts=history), durable=False)
    logs = attempt.logs = LogWriter(node.r, run_id, run_dir.parent / f"{run_dir.name}.driver.log",
                                    token=attempt.token)
    logs.system(f"attempt {attempt_no} of run {run_id} on node {cfg.name} (pool {cfg.pool}, "
                f"isolation {cfg.sandbox.describe() if cfg.sandbox else 'none'})")
    channel = run_dir.with_suffix(run_dir.suffix + ".channel")
    metrics_tail = _MetricsTail(node, run_id, channel / "metrics.jsonl", attempt, logs.system)
    result: ProcessResult | None = None
    error: RunError | None = None
    recorded: Future[None] | None = None
    try:
        if attempt.cancel.is_set():
            raise _Canceled()
        refusal = cfg.sandbox.refuses() if cfg.sandbox is not None else None
        if refusal:
            raise ClusterError(refusal, hint="install bubblewrap on the node (apt-get install bubblewrap) or "
                                             "run the node as root; or create the pool with isolation='best-effort'")
        clock.mark("spec")
        # storage blips while fetching the snapshot or the data cost a delay, not the run (retried, lease held)
        python, argv = _prepare(node, spec, run_dir, logs.system, clock, attempt.uses,
                                _retrying(attempt, cfg.storage_retry_seconds, logs.system))
        # a retry goes on from the last checkpoint (a first attempt has none: no read on the common path)
        resumed = checkpoints.restore(node, spec.prefix, run_dir, logs.system) if attempt_no > 1 else None
        recorded = node.background.submit(provenance.record_environment, node, spec.prefix, python,  # pip freeze
                                          attempt.check)
        if attempt.cancel.is_set():
            raise _Canceled()
        record = attempt.write(record.with_status(RunStatus.RUNNING, arguments=tuple(argv)), durable=False)
        logs.system(f"running {' '.join([spec.entry_script, *argv])}")
        channel.mkdir(parents=True, exist_ok=True)
        metrics_file = metrics_tail.path
        metrics_file.touch()
        tmp_dir = channel / "tmp"
        prepare_dirs(cfg.sandbox, run_dir, channel, tmp_dir)
        env = script_env(cfg.sandbox, os.environ, python=python, tmp_dir=tmp_dir,
                         extra=thread_env(cfg.limits.cpu_count if cfg.limits else None, spec.environment_variables),
                         user=dict(spec.environment_variables),
                         channel={"CLUSTER_RUN_ID": run_id, "CLUSTER_RUN_CHANNEL": str(metrics_file),
                                  "CLUSTER_EXPERIMENT": spec.experiment, "CLUSTER_RUN_PARENT_ID": spec.parent_id or "",
                                  **checkpoints.script_env(resumed),
                                  # tasks/leftovers.py finds a dead node's scripts by these
                                  "CLUSTER_RUN_LEASE": attempt.token, "CLUSTER_RUN_CLUSTER": cfg.cluster_tag})
        readonly = _readonly_paths(cfg, python, argv)
        launch = (cfg.sandbox.wrap([python, "-u", spec.entry_script, *argv], python=python, run_dir=run_dir,
                                   writable=[channel], readonly=readonly, tmp_dir=tmp_dir, cwd=run_dir)
                  if cfg.sandbox is not None else None)
        clock.mark("start")
        sync = checkpoints.CheckpointSync(node, spec.prefix, run_dir, attempt_no, holds=attempt.check,
                                          lost=attempt.lost.is_set, interval=cfg.checkpoint_seconds,
                                          caps=cfg.output_caps, log=logs.system)
        with metrics_tail, sync:
            result = run_supervised(launch.argv if launch else [python, "-u", spec.entry_script, *argv],
                                    cwd=run_dir, env=env, on_line=logs.line, timeout=spec.max_run_duration_seconds,
                                    cancel=attempt.cancel, grace=cfg.grace_seconds, limits=cfg.limits,
                                    user=launch.user if launch else None, group=launch.group if launch else None,
                                    wrapped=launch.wrapped if launch else False)
        clock.mark("script")
        attempt.check()
        logs.system(f"entry script ended: {result.describe()} after {result.duration:.1f}s")
        if result.exit_code != 0 and not result.canceled and _disk_full(run_dir):
            error = RunError(kind="disk", message=f"the node's disk ran full while the script ran ({result.describe()}"
                                                  f"; {_free(run_dir)} bytes left on the run's filesystem)",
                             exit_code=result.exit_code, signal=result.signal, stderr_tail=result.stderr_tail)
        if attempt.node_stopped:
            _hand_back(node, attempt, record, logs)
    except _Canceled:
        if attempt.node_stopped:
            _hand_back(node, attempt, record, logs)
        logs.system("canceled before the script started")
    except (LeaseLost, NodeStopped):
        raise
    except ClusterError as e:
        attempt.check()
        # a storage outage that outlasted the retries; anything else is the node's (a pip failure is the user's)
        error = RunError(kind="storage" if _transient(e) else "infrastructure", message=str(e))
        logs.system(f"preparation failed: {e}")
    except Exception as e:  # anything unexpected is the node's fault, never silently lost
        attempt.check()
        disk = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
        error = RunError(kind="disk" if disk else "infrastructure", message=f"{type(e).__name__}: {e}")
        logs.system(f"node error: {type(e).__name__}: {e}")

    # Finalization: every object-store and Redis write is retried with backoff while the lease is held (the
    # lease and heartbeats go on meanwhile); a storage outage longer than the budget fails the run with cause
    # `storage` instead of leaving it to be re-run as node-lost.
    retry = _retrying(attempt, cfg.storage_retry_seconds, logs.system)
    try:
        record = retry(lambda: attempt.write(record.with_status(RunStatus.FINALIZING), durable=False))
        uploaded, over = retry(lambda: _upload_results(node, attempt, spec.prefix + layout.attempt_dir(attempt_no),
                                                       run_dir, logs))
        logs.system(f"uploaded {uploaded} file(s) from ./outputs and ./logs")
        if over and error is None:
            error = RunError(kind="user", message=f"./outputs and ./logs hold {over}: the pool's cap "
                                                  "(max_output_files / max_output_bytes); the rest was not uploaded")
    except LeaseLost:
        raise
    except Exception as e:
        if error is None:
            error = RunError(kind="storage", message=f"could not store the run's outputs: {_describe(e)}")
        logs.system(f"storage failed while uploading outputs: {_describe(e)}")
    clock.mark("upload")
    declared = (declared_failure(metrics_tail.events or []) if error is None and result is not None
                and not result.canceled else None)
    if declared:  # the script called run.fail(...): Failed even if it exited 0
        error = RunError(kind="user", message=declared, exit_code=result.exit_code if result else None)
    final, error = _final_status(attempt, result, error)
    logs.system(f"final status: {final.value}" + (f" ({error.message})" if error else ""))
    retry(logs.close)
    attempt.check()
    # the metrics archive and the full log are independent: written concurrently, both before the final record
    folder = spec.prefix + layout.attempt_dir(attempt_no)
    archives = [lambda: node.store.put_file(folder + layout.RUN_DRIVER_LOG, logs.path)]
    if metrics_tail.events is not None and not attempt.lost.is_set():
        document = {"events": metrics_tail.events, "metrics": aggregate(metrics_tail.events)}
        archives.append(lambda: node.store.put_json(folder + layout.RUN_METRICS, document))
    try:
        for future in [node.background.submit(retry, write) for write in archives]:
            future.result()
    except LeaseLost:
        raise
    except Exception as e:
        final, error = RunStatus.FAILED, error or RunError(kind="storage", message=f"could not archive the "
                                                                                    f"run's log or metrics: "
                                                                                    f"{_describe(e)}")
    if recorded is not None:  # environment.json: best effort (its failure costs the record, never the run), but
        wait([recorded])      # before the final record, so readers of a final run see it
    clock.mark("finalize")
    history = (*record.attempts[:-1], {**record.attempts[-1], "ended": time.time(), "outcome": final.value,
                                       "phases": clock.phases})
    # The commit: the final record names this attempt's folder as the run's result, in the same fenced write
    # that ends the lease; readers never see a folder before it is complete, nor a mix of two attempts.
    attempt.finish(record.with_status(final, error=error, attempts=history, committed=attempt_no), retry)
    return final.value


def _hand_back(node: Node, attempt: _Attempt, record: RunRecord, logs: LogWriter) -> None:
    """The node is stopping and stopped the script: record the attempt as node-stopped, put the run back in
    Queued (fenced: only while this attempt holds it) and let the message go back to the queue."""
    logs.system(f"node {node.config.name} is stopping: the run goes back to the queue for another node")
    logs.close()
    history = (*record.attempts[:-1], {**record.attempts[-1], "ended": time.time(), "outcome": "node-stopped"})
    attempt._wait_stored()
    queued = replace(record.with_status(RunStatus.QUEUED), node=None, attempts=history)
    if not node.state.requeue(queued, expected_holder=attempt.token):
        raise LeaseLost(attempt.token)
    attempt.done = True
    raise NodeStopped(attempt.run_id)


def _describe(e: BaseException) -> str:
    return getattr(e, "message", None) or f"{type(e).__name__}: {e}"


def _transient(e: BaseException) -> bool:
    """Worth retrying: the object store or Redis did not answer (not our mistake, not a lost lease). A refusal of
    our credentials is not: waiting does not change a policy, and the run should fail with that cause at once."""
    if isinstance(e, CredentialsError):
        return False
    return isinstance(e, ServiceError | redis.ConnectionError | redis.TimeoutError | ConnectionError | TimeoutError)


def _retrying(attempt: _Attempt, budget: float, log: Callable[[str], None]) -> Callable[[Callable[[], T]], T]:
    """``retry(fn)``: call ``fn`` until it succeeds, backing off on transient storage errors for up to ``budget``
    seconds in all (shared by every write of the finalization); stops at once if the lease is lost."""
    deadline = time.monotonic() + budget

    def retry(fn: Callable[[], T]) -> T:
        def before_sleep(state: RetryCallState) -> None:
            err = state.outcome.exception() if state.outcome else None
            log(f"storage not answering ({_describe(err) if err else '?'}); retrying "
                f"(up to {max(0.0, deadline - time.monotonic()):.0f}s more)")

        def call() -> T:
            if attempt.lost.is_set():
                raise LeaseLost(attempt.token)
            return fn()

        retrying = Retrying(retry=retry_if_exception(_transient), reraise=True,
                            stop=stop_before_delay(max(0.0, deadline - time.monotonic())),
                            wait=wait_exponential(multiplier=0.2, max=5.0), before_sleep=before_sleep)
        return retrying(call)

    return retry


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


def _disk_full(path: Path) -> bool:
    return _free(path) < DISK_FULL_BYTES


def _free(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return DISK_FULL_BYTES  # unknown: not evidence of a full disk
    return st.f_bavail * st.f_frsize


#: a script that failed while its filesystem had less than this free failed because of the node's disk
DISK_FULL_BYTES = 1024 * 1024


def _prepare(node: Node, spec: RunSpec, run_dir: Path, log: Callable[[str], None],
             clock: _Clock, uses: contextlib.ExitStack,
             retry: Callable[[Callable[[], Any]], Any]) -> tuple[str, list[str]]:
    """The run directory, its Python and its arguments. The cache entries the run needs (environment, mounted
    data) are held in use in ``uses`` until the attempt ends, so pruning never removes them under it."""
    cfg = node.config
    snapshots = cfg.cache_dir / "snapshots"
    with cachegc.using(snapshots / check_digest(spec.snapshot)):  # only while it is copied
        template = retry(lambda: _snapshot(node, spec.snapshot, log))
        shutil.copytree(template, run_dir, symlinks=False)
    os.chmod(run_dir, 0o755)
    (run_dir / "outputs").mkdir(exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    entry = (run_dir / spec.entry_script).resolve()
    if not entry.is_relative_to(run_dir.resolve()) or not entry.is_file():
        raise ClusterError(f"entry script {spec.entry_script!r} is not in the snapshot",
                           hint="entry_script is a path relative to source_directory")
    clock.mark("snapshot")
    env = EnvSpec(spec.pip_packages, spec.conda_packages)
    if not env.is_empty:
        uses.enter_context(cachegc.using(cfg.cache_dir / "envs" / env.digest()))
    python = resolve_environment(env, cfg.cache_dir / "envs", log=log, sandbox=cfg.sandbox)
    clock.mark("environment")
    def resolve(value: Any) -> str:
        return str(retry(lambda: _resolve_arg(node, value, run_dir, log, uses)))

    argv = [resolve(a) for a in spec.arguments]
    clock.mark("data")
    return python, argv


def _snapshot(node: Node, digest: str, log: Callable[[str], None]) -> Path:
    """The extracted snapshot, cached per node by digest and verified against it (see tasks/snapshots.py)."""
    check_digest(digest)
    # the extracted size may not exceed what a submit may upload (max_snapshot_bytes)
    return verified_snapshot(node.store, digest, node.config.cache_dir / "snapshots", log,
                             max_bytes=node.settings.max_snapshot_bytes)


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


def _resolve_arg(node: Node, value: Any, run_dir: Path, log: Callable[[str], None],
                 uses: contextlib.ExitStack) -> str:
    if DataReference.is_reference(value):
        ref = DataReference.from_dict(value)
        if ref.datastore != layout.DEFAULT_DATASTORE:
            raise ClusterError(f"unknown datastore {ref.datastore!r} in {ref}")
        if ref.mode == "mount":
            uses.enter_context(cachegc.using(node.config.cache_dir / "data" / ref.datastore))
            return str(datacache.sync_mount(node.data, ref, node.config.cache_dir, log).path)
        return str(datacache.download_copy(node.data, ref, run_dir, log))
    if isinstance(value, bool | int | float | str):
        return str(value)
    return json.dumps(value)


def _upload_results(node: Node, attempt: _Attempt, dest: str, run_dir: Path,
                    logs: LogWriter) -> tuple[int, str]:
    """Upload ./outputs and ./logs to the attempt's own folder ``dest``, trusting nothing in them (tasks/rundir.py);
    (files uploaded, cap hit or '')."""
    count, caps = 0, node.config.output_caps
    used_files = used_bytes = 0
    for folder in (layout.OUTPUTS_DIR, layout.LOGS_DIR):
        walk = OutputWalk(run_dir, folder, OutputCaps(caps.max_bytes - used_bytes, caps.max_files - used_files),
                          logs.system)
        for key, fh, size in walk:
            attempt.check()
            node.store.put_stream(dest + key, fh, size)
            count += 1
        used_files += walk.files
        used_bytes += walk.nbytes
        if walk.over:
            return count, walk.over
    return count, ""


# the live metrics stream: appended only while the attempt holds the lease (one Lua call per batch)
_FENCED_METRICS = luascript.read("tasks", "fenced_metrics.lua")
METRICS_READ_BYTES = 1024 * 1024  # per poll
METRICS_STREAM_MAX = 100_000  # live events kept in Redis (XADD MAXLEN ~); metrics.json keeps them all
METRICS_MAX_BYTES = 256 * 1024 * 1024  # per run
METRICS_MAX_LINE = 1024 * 1024


class _MetricsTail:
    """Tail the per-run channel file into the run's Redis metrics stream; archive them at the end."""

    def __init__(self, node: Node, run_id: str, path: Path, attempt: _Attempt,
                 log: Callable[[str], None] = lambda _m: None) -> None:
        self.node, self.run_id, self.path, self.attempt = node, run_id, path, attempt
        self._log = log
        self.events: list[dict[str, Any]] | None = None  # None until the script started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"metrics-{run_id}", daemon=True)
        self._pos = 0
        self._partial = b""
        self._total = 0
        self._dead = False

    def __enter__(self) -> _MetricsTail:
        self.events = []
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._drain()

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
        if not new or self.attempt.lost.is_set() or self.events is None:
            return
        self.events.extend(new)
        keys = [layout.rk_run_metrics(self.run_id), layout.rk_run_lease(self.run_id)]
        if self.node.r.eval(_FENCED_METRICS, 2, *keys, self.attempt.token, METRICS_STREAM_MAX,
                            *(json.dumps(event) for event in new)) == -1:
            self.attempt.lost.set()  # fenced: another attempt holds the run
