"""Clean up after a previous incarnation of a node on this machine: scripts and run directories it left.

A node killed with SIGKILL (OOM killer, a crash) cannot stop its run's scripts: they were started in their own
session and live on. Every process of a run carries ``CLUSTER_RUN_LEASE=<node>/<attempt>`` in its environment
(the attempt's fencing token); a starting node kills every such process whose token no longer holds its run's
lease in Redis (its attempt is over: another attempt, or none, holds the run now). A live attempt on another node
of the same machine holds its lease and is left alone. Run directories in the node's work dir whose run no
longer has a live attempt are removed the same way.
"""

from __future__ import annotations

import contextlib
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
        if key in (LEASE_VAR.encode(), RUN_ID_VAR.encode()):
            out[key.decode()] = value.decode("utf-8", "replace")
    return out


def kill_leftover_scripts(r: redis.Redis, log: Callable[[str], None]) -> int:
    """SIGKILL every run process whose attempt no longer holds its lease; returns how many."""
    killed = 0
    me = os.getpid()
    for proc in psutil.process_iter(["pid"]):
        if proc.pid == me:
            continue
        marks = _marks(proc.pid)
        token, run_id = marks.get(LEASE_VAR), marks.get(RUN_ID_VAR)
        if not token or not run_id:
            continue
        if r.get(layout.rk_run_lease(run_id)) == token:
            continue  # a live attempt's script (this machine may run several nodes)
        with contextlib.suppress(psutil.Error):
            proc.kill()
            killed += 1
    if killed:
        log(f"killed {killed} process(es) left running by attempts that are over (a node that died)")
    return killed


def remove_stale_run_dirs(r: redis.Redis, work_dir: Path, log: Callable[[str], None]) -> int:
    """Remove ``<work_dir>/runs/<run_id>.<attempt>[.channel|.driver.log]`` of attempts that are over."""
    runs = work_dir / "runs"
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
