"""A node's entry point: one Celery worker (one slot) consuming its pool's queue, plus a heartbeat.

The heartbeat writes ``cluster:node:<name>`` every second: pool, state (idle/busy/draining), current run,
last heartbeat. Setting its ``drain`` field makes an idle node exit (scale-down); a busy node finishes its
run first.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from celery import signals as celery_signals

from cluster import layout
from cluster.settings import Settings
from tasks import app as app_module
from tasks.cachegc import DEFAULT_MAX_BYTES as DEFAULT_CACHE_BYTES
from tasks.leftovers import cluster_tag, kill_leftover_scripts, remove_stale_run_dirs
from tasks.node import Node, NodeConfig
from tasks.process import ResourceLimits
from tasks.rundir import OutputCaps
from tasks.sandbox import Sandbox, SandboxPolicy, detect, make_undumpable

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
NODE_KEY_TTL = 3600


@dataclass(frozen=True)
class WorkerOptions:
    pool: str
    name: str
    work_dir: Path
    cache_dir: Path
    static: bool = True
    limits: ResourceLimits | None = None
    remote_control: bool = False  # answer Celery inspect/control broadcasts (for Flower's worker view)
    cpus: tuple[int, ...] = ()  # pin the node (and so its runs) to these CPUs; () = all it may use
    lease_ms: int = 10_000
    visibility_timeout: float = app_module.VISIBILITY_TIMEOUT
    loglevel: str = "WARNING"
    policy: SandboxPolicy = field(default_factory=SandboxPolicy)
    output_caps: OutputCaps = field(default_factory=OutputCaps)
    hidden: tuple[Path, ...] = ()  # the node's config/state directory: invisible to sandboxed runs
    use_bwrap: bool = True
    max_cache_bytes: int = DEFAULT_CACHE_BYTES
    checkpoint_seconds: float = 5.0  # ./outputs/checkpoints upload period (the pool's setting)


def default_name(pool: str) -> str:
    return f"{pool}-{socket.gethostname()}-{os.getpid()}"


class Heartbeat(threading.Thread):
    def __init__(self, node: Node, opts: WorkerOptions) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.node, self.opts = node, opts
        self.stopping = threading.Event()
        self.key = layout.rk_node(opts.name)
        self.address = _local_address(node.settings.redis_url)

    def beat(self, state: str | None = None) -> None:
        run = self.node.current_run
        drain = self.node.r.hget(self.key, "drain") == "1"
        state = state or ("busy" if run else ("draining" if drain else "idle"))
        pipe = self.node.r.pipeline()
        pipe.hset(self.key, mapping={
            "pool": self.opts.pool, "state": state, "run": run or "", "heartbeat": f"{time.time():.3f}",
            "pid": os.getpid(), "host": socket.gethostname(), "address": self.address,
            "static": "1" if self.opts.static else "0",
            "isolation": self.node.config.isolation,
        })
        pipe.hsetnx(self.key, "started", f"{time.time():.3f}")
        pipe.expire(self.key, NODE_KEY_TTL)
        pipe.sadd(layout.RK_NODES, self.opts.name)
        pipe.execute()
        if drain and not run:
            self.stopping.set()
            os.kill(os.getpid(), signal.SIGTERM)  # Celery's warm shutdown: stop consuming, exit

    def run(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.beat()
            except Exception:  # a Redis blip must not kill the heartbeat thread
                continue


def _local_address(redis_url: str) -> str:
    """This host's address on the route to Redis (what other hosts know it by); '' when unknown."""
    from urllib.parse import urlsplit

    parts = urlsplit(redis_url)
    try:
        with socket.socket(socket.AF_INET6 if ":" in (parts.hostname or "") else socket.AF_INET,
                           socket.SOCK_DGRAM) as s:
            s.connect((parts.hostname or "127.0.0.1", parts.port or 6379))  # UDP: nothing is sent
            return str(s.getsockname()[0])
    except (OSError, ValueError):
        return ""


def _exit_before_celery(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def node_sandbox(opts: WorkerOptions) -> Sandbox:
    """Detect the node's isolation level; the state, work and cache directories are hidden from runs."""
    hidden = (*opts.hidden, opts.work_dir, opts.cache_dir)
    return detect(opts.policy, node_name=opts.name, hidden=hidden, use_bwrap=opts.use_bwrap)


def run_worker(settings: Settings, opts: WorkerOptions) -> None:
    """Block running the node until it is stopped (SIGTERM/SIGINT) or drained."""
    layout.check_name("pool", opts.pool)
    if opts.cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, opts.cpus)  # a run's CPUs are the first of the node's (ResourceLimits)
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    opts.cache_dir.mkdir(parents=True, exist_ok=True)
    make_undumpable()  # our /proc/<pid>/environ and memory: root-only, even for processes of our uid
    sandbox = node_sandbox(opts)
    limits = opts.limits or ResourceLimits()
    limits = ResourceLimits(memory_bytes=limits.memory_bytes, cpu_count=limits.cpu_count,
                            max_processes=opts.policy.max_processes)
    node = Node(settings, NodeConfig(name=opts.name, pool=opts.pool, work_dir=opts.work_dir,
                                     cache_dir=opts.cache_dir, limits=limits, lease_ms=opts.lease_ms,
                                     sandbox=sandbox, output_caps=opts.output_caps,
                                     max_cache_bytes=opts.max_cache_bytes, checkpoint_seconds=opts.checkpoint_seconds,
                                     cluster_tag=cluster_tag(settings.redis_url_masked)))
    log.info("node %s serving pool %s, isolation: %s (Ctrl-C to stop)", opts.name, opts.pool, sandbox.describe())
    if sandbox.level == "none":
        log.warning("WARNING: node %s runs scripts without isolation: a run can read this node's configuration and "
                    "credentials%s", opts.name,
                    " -- and the pool requires isolation, so every run will fail" if sandbox.refuses() else "")
    app = app_module.create_app(settings, visibility_timeout=opts.visibility_timeout,
                                remote_control=opts.remote_control)
    app_module.set_node(node)
    # Celery's own SIGTERM handler starts a warm shutdown (the task goes on); the run is then given
    # stop_grace_seconds before it is stopped and handed back to the queue (tasks/node.py)
    celery_signals.worker_shutting_down.connect(lambda **_kw: node.stopping.set(), weak=False)
    def note(message: str) -> None:
        log.info("node %s: %s", opts.name, message)

    try:  # what a previous incarnation on this machine left behind (it was killed mid-run)
        kill_leftover_scripts(node.r, node.config.cluster_tag, note)
        remove_stale_run_dirs(node.r, opts.work_dir, node.config.cluster_tag, note)
    except Exception as e:  # never a reason not to start
        note(f"could not clean up after earlier nodes: {type(e).__name__}: {e}")
    heartbeat = Heartbeat(node, opts)
    # stopped before Celery installs its own handler (which replaces this one): leave cleanly all the same
    signal.signal(signal.SIGTERM, _exit_before_celery)
    try:
        heartbeat.beat("idle")
        heartbeat.start()
        app.worker_main([
            "--quiet", "worker", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1",
            f"--queues={layout.queue_name(opts.pool)}", f"--hostname={opts.name}@%h",
            "--without-gossip", "--without-mingle", f"--loglevel={opts.loglevel}",
        ])
    finally:
        heartbeat.stopping.set()
        if heartbeat.is_alive():
            heartbeat.join(5)  # a beat in flight must not write the record again after it is removed
        try:
            node.r.delete(layout.rk_node(opts.name))
            node.r.srem(layout.RK_NODES, opts.name)
        except Exception:
            pass
        app_module.set_node(None)
