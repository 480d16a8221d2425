"""Clean up after a previous incarnation of a node on this machine: scripts and run directories it left.

A node killed with SIGKILL (OOM killer, a crash) cannot stop its run's scripts: they were started in their own
session and live on. Every process of a run carries ``CLUSTER_RUN_LEASE=<node>/<attempt>`` (the attempt's
fencing token) and ``CLUSTER_RUN_CLUSTER=<tag>`` (which cluster: :func:`cluster_tag`, from the Redis endpoint)
in its environment; a starting node kills every such process *of its cluster* whose token no longer holds its
run's lease in Redis (its attempt is over: another attempt, or none, holds the run now). A live attempt on
another node of the same machine holds its lease and is left alone; another cluster's runs (a second cluster on
the machine, a test cluster) are never looked at. Run directories live under ``<work_dir>/runs/<tag>/`` and are
removed the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis

from cluster import layout
from tasks.rundir import remove_tree

LEASE_VAR = "CLUSTER_RUN_LEASE"
RUN_ID_VAR = "CLUSTER_RUN_ID"
CLUSTER_VAR = "CLUSTER_RUN_CLUSTER"


def cluster_tag(redis_endpoint: str) -> str:
    """A short name for one cluster on this machine: a digest of its Redis endpoint (without the password)."""
    return hashlib.sha256(redis_endpoint.encode()).hexdigest()[:12]


def _marks(pid: int) -> dict[str, str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read(1024 * 1024)
    except OSError:
        return {}
    if f"{LEASE_VAR}=".encode() not in raw:
        return {}
    out = {}
    for entry in raw.split(b"\0"):
        key, _, value = entry.partition(b"=")
        if key in (LEASE_VAR.encode(), RUN_ID_VAR.encode(), CLUSTER_VAR.encode()):
            out[key.decode()] = value.decode("utf-8", "replace")
    return out


def kill_leftover_scripts(r: redis.Redis, tag: str, log: Callable[[str], None]) -> int:
    """SIGKILL every run process of this cluster (``tag``) whose attempt no longer holds its lease; how many."""
    killed = 0
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        marks = _marks(proc.pid)
        token, run_id = marks.get(LEASE_VAR), marks.get(RUN_ID_VAR)
        if not token or not run_id or marks.get(CLUSTER_VAR) != tag:
            continue  # not a run's process, or another cluster's
        if r.get(layout.rk_run_lease(run_id)) == token:
            continue  # a live attempt's script (this machine may run several nodes)
        with contextlib.suppress(psutil.Error):
            proc.kill()
            killed += 1
    if killed:
        log(f"killed {killed} process(es) left running by attempts that are over (a node that died)")
    return killed


def runs_dir(work_dir: Path, tag: str) -> Path:
    """Where a node of cluster ``tag`` keeps its run folders (one folder per cluster: never another's)."""
    return work_dir / "runs" / tag


def remove_stale_run_dirs(r: redis.Redis, work_dir: Path, tag: str, log: Callable[[str], None]) -> int:
    """Remove ``runs/<tag>/<run_id>.<attempt>[.channel|.driver.log]`` of attempts that are over."""
    runs = runs_dir(work_dir, tag)
    if not runs.is_dir():
        return 0
    removed = 0
    for path in runs.iterdir():
        name = path.name.removesuffix(".channel").removesuffix(".driver.log")
        run_id, _, attempt = name.rpartition(".")
        if not run_id or not attempt.isdigit():
            continue
        holder: Any = r.get(layout.rk_run_lease(run_id))
        if holder is not None and str(holder).rsplit("/", 1)[-1] == attempt:
            continue  # that attempt is live (another node process sharing this work dir)
        if path.is_dir() and not path.is_symlink():
            remove_tree(path)
        else:
            path.unlink(missing_ok=True)
        removed += 1
    if removed:
        log(f"removed {removed} run folder(s) and log(s) left by attempts that are over")
    return removed
