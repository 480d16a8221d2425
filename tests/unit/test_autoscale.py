"""The pure scaling decision, node sizes and pool definitions (no servers)."""

from __future__ import annotations

import pytest

from cluster.autoscale import NodeState, NodeView, PoolObservation, PoolSpec, ScalingDecision, decide
from cluster.errors import PayloadError, UsageError
from cluster.sizes import GiB, get_size

STARTING, IDLE, BUSY, DRAINING, LOST = (
    NodeState.STARTING, NodeState.IDLE, NodeState.BUSY, NodeState.DRAINING, NodeState.LOST
)


def observe(
    pool: PoolSpec, *nodes: NodeView, queued: int = 0, running: int = 0, now: float = 1000.0
) -> ScalingDecision:
    """decide() on one observation of ``pool``."""
    return decide(PoolObservation(pool=pool, nodes=tuple(nodes), queued=queued, running=running, now=now))


def test_empty_pool_with_queued_runs_starts_nodes() -> None:
    d = observe(PoolSpec("cpu"), queued=2)
    assert (d.pool, d.desired, d.start, d.drain) == ("cpu", 2, 2, ())
    assert "2 queued + 0 running -> want 2" in d.reason and "start 2" in d.reason


def test_reason_has_the_numbers() -> None:
    pool = PoolSpec("cpu", max_nodes=4)
    d = observe(pool, NodeView("a", IDLE, idle_since=999), NodeView("b", BUSY), queued=3, running=1)
    assert d.start == 2
    assert d.reason == "3 queued + 1 running -> want 4 (max 4); 1 idle + 1 busy + 0 starting -> start 2"
    assert d.to_dict() == {"pool": "cpu", "desired": 4, "start": 2, "drain": [], "reason": d.reason}


def test_desired_counts_running_runs_not_only_the_queue() -> None:
    pool = PoolSpec("cpu", idle_seconds_before_scaledown=0)
    nodes = (NodeView("a", BUSY), NodeView("b", BUSY))
    d = observe(pool, *nodes, queued=0, running=2)
    assert (d.desired, d.start, d.drain) == (2, 0, ())
    assert d.reason.endswith("-> no change")


def test_scale_zero_to_two_to_zero_over_time() -> None:
    """Simulate a controller loop: nodes start, run, go idle, and are drained only after the timeout."""
    pool = PoolSpec("cpu", min_nodes=0, max_nodes=4, idle_seconds_before_scaledown=10)
    t = 0.0
    # t=0: two runs submitted to an empty pool
    d = observe(pool, queued=2, now=t)
    assert d.start == 2
    # t=1: the provider started them; they have not joined yet -> nothing more to start
    nodes = [NodeView("n1", STARTING, started_at=0), NodeView("n2", STARTING, started_at=0)]
    t = 1.0
    assert observe(pool, *nodes, queued=2, now=t).start == 0
    # t=5: both picked up a run
    t = 5.0
    nodes = [NodeView("n1", BUSY, started_at=0), NodeView("n2", BUSY, started_at=0)]
    d = observe(pool, *nodes, queued=0, running=2, now=t)
    assert (d.desired, d.start, d.drain) == (2, 0, ())
    # t=20: n1 finished at 20, n2 at 22 -> idle, but not for 10 s yet
    nodes = [NodeView("n1", IDLE, idle_since=20), NodeView("n2", IDLE, idle_since=22)]
    for t in (20.0, 25.0, 29.9):
        d = observe(pool, *nodes, now=t)
        assert (d.desired, d.start, d.drain) == (0, 0, ()), t
    # t=30: n1 has idled 10 s -> drained; n2 not yet
    d = observe(pool, *nodes, now=30.0)
    assert d.drain == ("n1",)
    # t=32: n1 is draining (does not count), n2 idled 10 s -> drained too
    nodes = [NodeView("n1", DRAINING), NodeView("n2", IDLE, idle_since=22)]
    d = observe(pool, *nodes, now=32.0)
    assert d.drain == ("n2",)
    # t=40: both gone -> the pool is at zero and stays there
    d = observe(pool, now=40.0)
    assert (d.desired, d.start, d.drain) == (0, 0, ())


def test_busy_node_is_never_drained() -> None:
    pool = PoolSpec("cpu", idle_seconds_before_scaledown=0)
    d = observe(pool, NodeView("a", BUSY, idle_since=0.0), NodeView("b", BUSY), queued=0, running=0, now=1e9)
    assert d.desired == 0
    assert d.drain == ()


def test_idle_shorter_than_timeout_is_not_drained() -> None:
    pool = PoolSpec("cpu", idle_seconds_before_scaledown=120)
    d = observe(pool, NodeView("a", IDLE, idle_since=900.0), now=1000.0)
    assert d.drain == ()
    assert "keep all" in d.reason
    assert observe(pool, NodeView("a", IDLE, idle_since=880.0), now=1000.0).drain == ("a",)


def test_idle_node_without_idle_since_is_not_drained() -> None:
    pool = PoolSpec("cpu", idle_seconds_before_scaledown=0)
    assert observe(pool, NodeView("a", IDLE, idle_since=None), now=1e9).drain == ()


def test_oldest_idle_first_and_ties_by_name() -> None:
    pool = PoolSpec("cpu", max_nodes=8, idle_seconds_before_scaledown=10)
    nodes = [
        NodeView("d", IDLE, idle_since=500),
        NodeView("c", IDLE, idle_since=100),
        NodeView("b", IDLE, idle_since=100),
        NodeView("a", IDLE, idle_since=995),  # too recent
        NodeView("e", BUSY),
    ]
    # 1 running -> desired 1; capacity 5 -> excess 4, but only b, c, d are eligible
    d = observe(pool, *nodes, running=1, now=1000)
    assert d.drain == ("b", "c", "d")
    # only drain as many as the excess
    d = observe(pool, *nodes, queued=2, running=1, now=1000)
    assert d.desired == 3 and d.drain == ("b", "c")
    # input order does not matter
    assert observe(pool, *reversed(nodes), queued=2, running=1, now=1000) == d


def test_min_nodes_are_kept() -> None:
    pool = PoolSpec("cpu", min_nodes=2, max_nodes=4, idle_seconds_before_scaledown=0)
    idle = [NodeView(f"n{i}", IDLE, idle_since=0) for i in range(3)]
    d = observe(pool, *idle, now=1e6)
    assert d.desired == 2 and d.drain == ("n0",)
    d = observe(pool, *idle[:2], now=1e6)
    assert d.drain == ()
    # an empty pool with min_nodes starts them without any runs
    d = observe(pool)
    assert (d.desired, d.start) == (2, 2)
    assert "(min 2, max 4)" in d.reason


def test_max_never_exceeded_under_a_burst() -> None:
    pool = PoolSpec("cpu", max_nodes=4)
    d = observe(pool, queued=20)
    assert (d.desired, d.start) == (4, 4)
    d = observe(pool, NodeView("a", BUSY), NodeView("b", STARTING), queued=20, running=1)
    assert (d.desired, d.start) == (4, 2)
    full = [NodeView("a", BUSY), NodeView("b", BUSY), NodeView("c", STARTING), NodeView("d", IDLE, idle_since=999)]
    assert observe(pool, *full, queued=20, running=2).start == 0


def test_draining_nodes_hold_their_slot() -> None:
    pool = PoolSpec("cpu", max_nodes=4)
    # 2 draining + 1 busy: capacity 1, want 4, but only 1 slot free
    nodes = [NodeView("a", DRAINING), NodeView("b", DRAINING), NodeView("c", BUSY)]
    d = observe(pool, *nodes, queued=20, running=1)
    assert (d.desired, d.start) == (4, 1)
    assert "only 1 of 4 slots free" in d.reason
    # 4 draining: no slot at all
    d = observe(pool, *(NodeView(f"d{i}", DRAINING) for i in range(4)), queued=20)
    assert d.start == 0
    # in every case the pool's machines never exceed max_nodes
    for n_draining in range(5):
        for n_busy in range(5 - n_draining):
            nodes = [NodeView(f"d{i}", DRAINING) for i in range(n_draining)]
            nodes += [NodeView(f"b{i}", BUSY) for i in range(n_busy)]
            d = observe(pool, *nodes, queued=20, running=n_busy)
            assert len(nodes) + d.start <= pool.max_nodes


def test_static_nodes_count_as_capacity_but_are_never_drained() -> None:
    pool = PoolSpec("cpu", idle_seconds_before_scaledown=0)
    static = NodeView("laptop", IDLE, static=True, idle_since=0)
    d = observe(pool, static, queued=1, now=1e6)
    assert (d.desired, d.start, d.drain) == (1, 0, ())
    d = observe(pool, static, now=1e6)
    assert (d.desired, d.drain) == (0, ())
    # with a scalable idle node too, the scalable one goes
    d = observe(pool, static, NodeView("n1", IDLE, idle_since=5), now=1e6)
    assert d.drain == ("n1",)


def test_lost_nodes_are_not_capacity_and_hold_no_slot() -> None:
    pool = PoolSpec("cpu", max_nodes=2)
    d = observe(pool, NodeView("a", LOST), NodeView("b", LOST), queued=2)
    assert (d.desired, d.start) == (2, 2)
    assert "2 lost" in d.reason


def test_nodes_may_be_given_plain_state_strings() -> None:
    node = NodeView("a", "idle", idle_since=0)  # type: ignore[arg-type]
    assert node.state is NodeState.IDLE
    assert NodeState.BUSY == "busy"
    with pytest.raises(UsageError, match="state must be one of"):
        NodeView("a", "sleeping")  # type: ignore[arg-type]


def test_observation_validation() -> None:
    pool = PoolSpec("cpu")
    with pytest.raises(UsageError):
        PoolObservation(pool, (), queued=-1, running=0, now=0)
    with pytest.raises(UsageError, match="unique"):
        PoolObservation(pool, (NodeView("a", IDLE), NodeView("a", BUSY)), queued=0, running=0, now=0)


# ---- sizes ----------------------------------------------------------------------------------------


def test_sizes() -> None:
    assert (get_size("small").cpus, get_size("small").memory_bytes) == (1, 2 * GiB)
    assert (get_size("medium").cpus, get_size("medium").memory_bytes) == (2, 4 * GiB)
    assert (get_size("large").cpus, get_size("large").memory_bytes) == (4, 16 * GiB)
    assert get_size("Medium") is get_size("medium")


@pytest.mark.parametrize(
    ("alias", "size"),
    [
        ("STANDARD_D1_V2", "small"),
        ("Standard_D2_v2", "medium"),
        ("standard_d3_v2", "large"),
        ("STANDARD_D4_V2", "large"),
    ],
)
def test_azure_aliases(alias: str, size: str) -> None:
    assert get_size(alias).name == size


def test_unknown_size_lists_valid_names() -> None:
    with pytest.raises(UsageError, match="unknown node size 'xl'") as e:
        get_size("xl")
    assert "small, medium, large" in str(e.value) and "STANDARD_D2_V2" in str(e.value)


# ---- pool definitions -------------------------------------------------------------------------------


def test_pool_spec_defaults_and_round_trip() -> None:
    pool = PoolSpec("cpu-cluster")
    assert (pool.vm_size, pool.min_nodes, pool.max_nodes, pool.idle_seconds_before_scaledown) == ("small", 0, 4, 120.0)
    spec = PoolSpec("gpu", vm_size="STANDARD_D2_V2", min_nodes=1, max_nodes=3, idle_seconds_before_scaledown=30)
    assert PoolSpec.from_dict(spec.to_dict()) == spec
    assert spec.idle_seconds_before_scaledown == 30.0
    assert PoolSpec.from_dict({"name": "x", "future_field": 1}) == PoolSpec("x")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "../etc"},
        {"name": ""},
        {"name": "a b"},
        {"name": "ok", "min_nodes": -1},
        {"name": "ok", "min_nodes": 3, "max_nodes": 2},
        {"name": "ok", "max_nodes": 0},
        {"name": "ok", "max_nodes": 2.5},
        {"name": "ok", "min_nodes": True},
        {"name": "ok", "idle_seconds_before_scaledown": -1},
        {"name": "ok", "idle_seconds_before_scaledown": float("nan")},
        {"name": "ok", "idle_seconds_before_scaledown": "60"},
        {"name": "ok", "vm_size": "huge"},
    ],
)
def test_pool_spec_validation(kwargs: dict) -> None:
    with pytest.raises(UsageError):
        PoolSpec(**kwargs)


def test_pool_spec_from_bad_record() -> None:
    with pytest.raises(PayloadError):
        PoolSpec.from_dict({"min_nodes": 1})
    with pytest.raises(PayloadError):
        PoolSpec.from_dict(["cpu"])  # type: ignore[arg-type]
