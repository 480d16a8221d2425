"""Nodes as the cluster sees them: each node's heartbeat hash in Redis, read into typed records.

A node (a worker, :mod:`tasks.node`) refreshes ``layout.rk_node(name)`` every few seconds with its pool, state,
current run and a ``heartbeat`` timestamp. :data:`NODE_LOST_SECONDS` of silence makes it *lost*: the one
threshold the controller, the metrics and ``cluster nodes`` share.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cluster import layout
from cluster.autoscale import NodeState

if TYPE_CHECKING:
    from cluster.workspace import Workspace

#: heartbeat silence (seconds) after which a node is lost (``cluster controller --node-lost-seconds`` overrides)
NODE_LOST_SECONDS = 10.0


def node_state(h: Mapping[str, str], now: float, lost_after: float = NODE_LOST_SECONDS) -> NodeState:
    """A node's state from its heartbeat hash: lost after ``lost_after`` seconds of silence."""
    beat = float(h.get("heartbeat", 0) or 0)
    if now - beat > lost_after:
        return NodeState.LOST
    if h.get("drain") == "1":
        return NodeState.DRAINING
    try:
        return NodeState(h.get("state", "idle"))
    except ValueError:
        return NodeState.IDLE


@dataclass(frozen=True)
class NodeInfo:
    """One node, from its last heartbeat."""

    name: str
    pool: str
    state: NodeState
    run: str | None  # the run it is executing, if any
    heartbeat_age: float  # seconds since its last heartbeat
    static: bool  # started by hand (`cluster worker`), never scaled away
    isolation: str  # how its runs are sandboxed, as the node reported it
    host: str = ""  # the machine it runs on (its host name), and the address it reaches Redis from
    address: str = ""

    @classmethod
    def from_heartbeat(cls, name: str, h: Mapping[str, str], now: float,
                       lost_after: float = NODE_LOST_SECONDS) -> NodeInfo:
        return cls(name=name, pool=h.get("pool", ""), state=node_state(h, now, lost_after), run=h.get("run") or None,
                   heartbeat_age=max(0.0, now - float(h.get("heartbeat", 0) or 0)), static=h.get("static") == "1",
                   isolation=h.get("isolation", "?"), host=h.get("host", ""), address=h.get("address", ""))


def heartbeats(r: Any, *, forget_gone: bool = False) -> dict[str, dict[str, str]]:
    """Every known node's heartbeat hash, by name (one round trip). A name whose hash expired (its node is gone)
    is left out; ``forget_gone`` also drops it from the set of known nodes (the controller does)."""
    names = sorted(str(n) for n in r.smembers(layout.RK_NODES))
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(layout.rk_node(name))
    out = {}
    for name, h in zip(names, pipe.execute(), strict=True):
        if h:
            out[name] = h
        elif forget_gone:
            r.srem(layout.RK_NODES, name)
    return out


def list_nodes(ws: Workspace, now: float | None = None, lost_after: float = NODE_LOST_SECONDS) -> list[NodeInfo]:
    """Every node that has a heartbeat hash, by name."""
    now = time.time() if now is None else now
    return [NodeInfo.from_heartbeat(name, h, now, lost_after) for name, h in heartbeats(ws.redis).items()]
