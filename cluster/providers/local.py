"""The ``local`` provider: node processes on this machine (the embedded cluster's default).

Each node is ``python -m cluster.cli worker --managed ...`` in its own session, recorded in the embedded
cluster's state.json (pid + start time) so that `cluster down` stops it even if the controller died.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import psutil

from cluster import embedded
from cluster.autoscale import PoolSpec

NODE_PREFIX = "node-"


class LocalProvider:
    name = "local"

    def __init__(self, state_dir: Path, *, extra_args: tuple[str, ...] = ()) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.extra_args = extra_args

    def _mine(self, pool: PoolSpec) -> list[embedded.ManagedProcess]:
        tag = f"{NODE_PREFIX}{pool.name}-"
        return [p for p in embedded.State.load(self.state_dir).processes
                if p.name.startswith(tag) and "--managed" in p.argv]

    def start_nodes(self, pool: PoolSpec, count: int) -> list[str]:
        names = []
        for _ in range(count):
            name = f"{NODE_PREFIX}{pool.name}-{secrets.token_hex(3)}"
            # the node's own credentials (node-config.json); absent in compose: nodes then read CLUSTER_* variables
            config = embedded.role_config(self.state_dir, "node")
            argv = [sys.executable, "-m", "cluster.cli", "worker", "--managed", "--pool", pool.name,
                    "--node-name", name, "--size", pool.vm_size,
                    *(["--config", str(config)] if config.exists() else []),
                    "--work-dir", str(self.state_dir / "nodes" / name),
                    "--cache-dir", str(self.state_dir / "node-cache"), *pool.node_args("best-effort"),
                    *self.extra_args]
            # with its own config file a node needs none of the CLUSTER_* variables (the controller's credentials)
            env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")} if config.exists() else None
            embedded.add_process(self.state_dir, embedded.spawn(name, argv, self.state_dir, env=env))
            names.append(name)
        return names

    def stop_node(self, pool: PoolSpec, node: str, *, grace: float = 10.0) -> None:
        for mp in self._mine(pool):
            if mp.name != node:
                continue
            proc = mp.process()
            if proc is not None:
                try:
                    proc.terminate()
                    proc.wait(grace)
                except psutil.TimeoutExpired:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            embedded.reap(mp.pid)
            embedded.remove_process(self.state_dir, mp.pid)

    def list_nodes(self, pool: PoolSpec) -> list[str]:
        alive: list[embedded.ManagedProcess] = []
        dead: list[embedded.ManagedProcess] = []
        for mp in self._mine(pool):
            embedded.reap(mp.pid)
            (alive if mp.alive else dead).append(mp)
        for mp in dead:
            embedded.remove_process(self.state_dir, mp.pid)
        return sorted(mp.name for mp in alive)
