"""One controller leads at a time, on the real Redis, however long its ticks take."""

from __future__ import annotations

import threading
import time

from cluster.autoscale import PoolSpec
from cluster.controller import Controller, ControllerConfig
from cluster.workspace import Workspace
from tests.helpers import unique, wait_until


class _NoNodes:
    name = "none"

    def start_nodes(self, pool: PoolSpec, count: int) -> list[str]:
        return []

    def stop_node(self, pool: PoolSpec, node: str, *, force: bool = False) -> None:
        pass

    def list_nodes(self, pool: PoolSpec) -> list[str]:
        return []


class _SlowController(Controller):
    """A leader whose one tick lasts several lease periods (a recovery after a Redis wipe, a slow store)."""

    ticks: int = 0

    def tick(self, now: float) -> None:
        self.ticks += 1
        time.sleep(self.config.leader_ttl_ms / 1000 * 4)


def test_a_tick_longer_than_the_lease_keeps_the_leadership(ws: Workspace) -> None:
    cfg = ControllerConfig(leader_ttl_ms=600, leader_key=unique("cluster:test:leader"), tick_seconds=0.05)
    first = _SlowController(ws, _NoNodes(), cfg)
    second = Controller(ws, _NoNodes(), cfg)
    stop = threading.Event()
    thread = threading.Thread(target=first.run_forever, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_until(lambda: first.ticks >= 1, 10, "the first controller leading")
        deadline = time.monotonic() + 3 * cfg.leader_ttl_ms / 1000  # within one long tick: 3 lease periods
        while time.monotonic() < deadline:
            assert not second._lead(), "two controllers led at once"
            time.sleep(0.05)
        assert ws.redis.get(cfg.leader_key) == first.ident
    finally:
        stop.set()
        thread.join(timeout=10)
    # the leader left: its lease is released at once, the other takes over
    assert second._lead()
    ws.redis.delete(cfg.leader_key)
