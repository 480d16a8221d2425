"""Nodes from their heartbeats: typed records, one lost threshold."""

from __future__ import annotations

from cluster import layout
from cluster.autoscale import NodeState
from cluster.nodes import NODE_LOST_SECONDS, list_nodes, node_state
from cluster.workspace import Workspace


def _beat(ws: Workspace, name: str, **fields: object) -> None:
    ws.redis.hset(layout.rk_node(name), mapping={"pool": "cpu", **fields})  # type: ignore[arg-type]
    ws.redis.sadd(layout.RK_NODES, name)


def test_list_nodes_reads_every_heartbeat_into_a_record(mem_ws: Workspace) -> None:
    now = 1000.0
    _beat(mem_ws, "b-busy", state="busy", heartbeat=now - 1, run="exp_1_a", isolation="sandbox")
    _beat(mem_ws, "a-idle", state="idle", heartbeat=now - 2, static="1")
    _beat(mem_ws, "c-silent", state="busy", heartbeat=now - NODE_LOST_SECONDS - 0.5)
    _beat(mem_ws, "d-draining", state="idle", heartbeat=now, drain="1")
    mem_ws.redis.sadd(layout.RK_NODES, "e-gone")  # listed, but its hash expired
    nodes = list_nodes(mem_ws, now=now)
    assert [(n.name, n.state) for n in nodes] == [("a-idle", NodeState.IDLE), ("b-busy", NodeState.BUSY),
                                                  ("c-silent", NodeState.LOST), ("d-draining", NodeState.DRAINING)]
    busy = nodes[1]
    assert (busy.run, busy.heartbeat_age, busy.static, busy.isolation) == ("exp_1_a", 1.0, False, "sandbox")
    assert nodes[0].static and nodes[0].run is None and nodes[0].isolation == "?"


def test_node_state_uses_the_one_threshold_unless_told_otherwise() -> None:
    h = {"state": "busy", "heartbeat": "100"}
    assert node_state(h, 100 + NODE_LOST_SECONDS) is NodeState.BUSY
    assert node_state(h, 100 + NODE_LOST_SECONDS + 0.1) is NodeState.LOST
    assert node_state(h, 130, lost_after=60) is NodeState.BUSY
    assert node_state({"state": "weird", "heartbeat": "100"}, 100) is NodeState.IDLE
