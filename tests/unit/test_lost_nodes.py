"""The controller's pure decision about lost nodes (acting on it is tested against real nodes)."""

from cluster.controller import lost_nodes

NOW = 1_000.0


def _hb(pool: str, age: float, **extra: str) -> dict[str, str]:
    return {"pool": pool, "heartbeat": str(NOW - age), "state": "busy", **extra}


def test_each_kind_of_loss() -> None:
    heartbeats = {
        "fresh": _hb("p", 1), "ended": _hb("p", 1), "hung": _hb("p", 30), "static": _hb("p", 30),
        "other-pool": _hb("q", 30), "static-ok": _hb("p", 2),
    }
    out = lost_nodes(heartbeats, "p", managed={"fresh", "hung"}, known={"fresh", "ended", "hung"}, now=NOW,
                     lost_after=10)
    assert out == {"ended": "gone", "hung": "hung", "static": "silent"}


def test_a_node_not_yet_known_to_the_provider_is_not_gone() -> None:
    # started, heartbeating, but the provider has not listed it yet: neither known nor managed
    assert lost_nodes({"new": _hb("p", 0)}, "p", managed=set(), known=set(), now=NOW, lost_after=10) == {}


def test_boundary_is_strictly_longer_than_the_threshold() -> None:
    assert lost_nodes({"n": _hb("p", 10)}, "p", managed={"n"}, known={"n"}, now=NOW, lost_after=10) == {}
    assert lost_nodes({"n": _hb("p", 10.5)}, "p", managed={"n"}, known={"n"}, now=NOW, lost_after=10) == {"n": "hung"}
