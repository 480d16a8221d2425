"""The ``local`` provider: node processes on this machine (the embedded cluster's default).

Each node is ``python -m cluster.cli worker --managed ...`` in its own session, recorded in the embedded
cluster's state.json (pid + start time) so that `cluster down` stops it even if the controller died.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import psutil

from cluster import embedded
from cluster.autoscale import PoolSpec
from cluster.sizes import get_size

NODE_PREFIX = "node-"
SPARE_PREFIX = "spare-"
CPUS_FLAG = "--cpus"


def allocate_cpus(available: Sequence[int], in_use: Iterable[Sequence[int]], count: int) -> tuple[int, ...]:
    """The ``count`` CPUs of ``available`` least used by the nodes already running (``in_use``: each node's
    CPU set), lowest number first among equals. Nodes get disjoint sets while the host has cores to spare;
    beyond that the load is spread evenly rather than piled on CPU 0."""
    usage = Counter(cpu for cpus in in_use for cpu in cpus)
    ranked = sorted(available, key=lambda cpu: (usage[cpu], cpu))
    return tuple(sorted(ranked[:max(1, min(count, len(ranked)))]))


def node_cpus(argv: Sequence[str]) -> tuple[int, ...]:
    """The CPU set a node was started with (its ``--cpus`` argument), or () if none."""
    for flag, value in itertools.pairwise(argv):
        if flag == CPUS_FLAG:
            return tuple(int(c) for c in value.split(",") if c.strip().isdigit())
    return ()


class LocalProvider:
    """Node processes on this machine. ``spares`` warm processes wait with everything imported, so a pool that
    scales up from zero gets a node in a fraction of the time a fresh Python process needs to start."""

    name = "local"

    def __init__(self, state_dir: Path, *, extra_args: tuple[str, ...] = (), spares: int = 0) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.extra_args = extra_args
        self.spares = spares
        self.ensure_spares()

    def _mine(self, pool: PoolSpec) -> list[embedded.ManagedProcess]:
        tag = f"{NODE_PREFIX}{pool.name}-"
        return [p for p in embedded.State.load(self.state_dir).processes
                if p.name.startswith(tag) and "--managed" in p.argv]

    def _common_args(self) -> list[str]:
        # the node's own credentials (node-config.json); absent in compose: nodes then read CLUSTER_* variables
        config = embedded.role_config(self.state_dir, "node")
        return [*(["--config", str(config)] if config.exists() else []),
                "--cache-dir", str(self.state_dir / "node-cache"), *self.extra_args]

    def _env(self) -> dict[str, str] | None:
        """With its own config file a node needs none of the CLUSTER_* variables (the controller's credentials)."""
        if not embedded.role_config(self.state_dir, "node").exists():
            return None
        return {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}

    def _spare_file(self, spare: str) -> Path:
        return self.state_dir / "spares" / f"{spare}.json"

    def ensure_spares(self) -> None:
        """Keep ``spares`` warm spare processes (forgetting dead ones)."""
        if self.spares <= 0:
            return
        state = embedded.State.load(self.state_dir)
        spares = [p for p in state.processes if p.name.startswith(SPARE_PREFIX)]
        for dead in (p for p in spares if not p.alive):
            embedded.reap(dead.pid)
            embedded.remove_process(self.state_dir, dead.pid)
        for _ in range(self.spares - sum(p.alive for p in spares)):
            name = f"{SPARE_PREFIX}{secrets.token_hex(3)}"
            self._spare_file(name).parent.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, "-m", "cluster.cli", "worker", "--spare-file", str(self._spare_file(name)),
                    *self._common_args()]
            embedded.add_process(self.state_dir, embedded.spawn(name, argv, self.state_dir, env=self._env()))

    def start_nodes(self, pool: PoolSpec, count: int) -> list[str]:
        names = []
        available = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        for _ in range(count):
            name = f"{NODE_PREFIX}{pool.name}-{secrets.token_hex(3)}"
            cpus: list[str] = []
            if available:  # each node its own cores (its size's count) while the host has them
                in_use = [node_cpus(p.argv) for p in embedded.State.load(self.state_dir).processes if p.alive]
                chosen = allocate_cpus(available, in_use, get_size(pool.vm_size).cpus)
                cpus = [CPUS_FLAG, ",".join(map(str, chosen))]
            work_dir = self.state_dir / "nodes" / name
            argv = [sys.executable, "-m", "cluster.cli", "worker", "--managed", "--pool", pool.name,
                    "--node-name", name, "--size", pool.vm_size, *cpus, "--work-dir", str(work_dir),
                    *pool.node_args("best-effort"), *self._common_args()]
            spare = next((p for p in embedded.State.load(self.state_dir).processes
                          if p.name.startswith(SPARE_PREFIX) and p.alive), None)
            if spare is not None:  # a warm process becomes this node: recorded under the node's name and argv
                assignment = {"pool": pool.name, "node_name": name, "size": pool.vm_size,
                              "cpus": cpus[1] if cpus else "", "work_dir": str(work_dir),
                              "isolation": pool.isolation or "best-effort", "network": pool.network,
                              "max_output_bytes": pool.max_output_bytes, "max_output_files": pool.max_output_files,
                              "max_cache_bytes": pool.max_cache_bytes,
                              "checkpoint_seconds": pool.checkpoint_seconds}
                target = self._spare_file(spare.name)
                tmp = target.with_suffix(".tmp")
                tmp.write_text(json.dumps(assignment))
                tmp.replace(target)
                embedded.replace_process(self.state_dir, spare.pid, name=name, argv=argv)
            else:
                embedded.add_process(self.state_dir, embedded.spawn(name, argv, self.state_dir, env=self._env()))
            names.append(name)
        self.ensure_spares()
        return names

    def stop_node(self, pool: PoolSpec, node: str, *, force: bool = False, grace: float = 10.0) -> None:
        for mp in self._mine(pool):
            if mp.name != node:
                continue
            proc = mp.process()
            if proc is not None and force:
                # lost: a stopped or hung node never answers SIGTERM; its run's script is its child
                victims = [proc]
                with contextlib.suppress(psutil.Error):
                    victims += proc.children(recursive=True)
                for v in victims:
                    with contextlib.suppress(psutil.Error):
                        v.kill()
            elif proc is not None:
                try:
                    proc.terminate()
                    proc.wait(grace)
                except psutil.TimeoutExpired:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            embedded.reap(mp.pid)
            embedded.remove_process(self.state_dir, mp.pid)
            self._forget_work_dir(node)

    def _forget_work_dir(self, node: str) -> None:
        """A node's work dir goes with it (node names are never reused): nothing piles up over scale cycles."""
        folder = self.state_dir / "nodes" / node
        if not folder.is_dir() or folder.is_symlink():
            return

        def unlock(_fn: object, path: str, _exc: object) -> None:  # a run may leave chmod-000 folders behind
            with contextlib.suppress(OSError):
                os.chmod(os.path.dirname(path), 0o700)
                os.chmod(path, 0o700)

        shutil.rmtree(folder, onerror=unlock)  # first pass opens what it could not enter
        shutil.rmtree(folder, ignore_errors=True)

    def list_nodes(self, pool: PoolSpec) -> list[str]:
        alive: list[embedded.ManagedProcess] = []
        dead: list[embedded.ManagedProcess] = []
        for mp in self._mine(pool):
            embedded.reap(mp.pid)
            (alive if mp.alive else dead).append(mp)
        for mp in dead:
            embedded.remove_process(self.state_dir, mp.pid)
            if not mp.name.startswith(SPARE_PREFIX):
                self._forget_work_dir(mp.name)
        return sorted(mp.name for mp in alive)
