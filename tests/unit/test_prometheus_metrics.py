"""Metrics without servers: phase durations from a record's timestamps, counting transitions, the
controller's autoscaling switch (on an in-memory Redis stand-in), and the metrics_port setting."""

from __future__ import annotations

import json
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from cluster.autoscale import NodeState, NodeView, PoolObservation, PoolSpec
from cluster.cli import build_parser
from cluster.controller import Controller, ControllerConfig
from cluster.errors import ConfigError
from cluster.records import now_iso
from cluster.settings import ENV_VARS, Settings
from cluster.telemetry import PHASES, Telemetry, phase_durations

T0 = 1_800_000_000.0


def stamps(**offsets: float) -> dict[str, str]:
    return {status: now_iso(T0 + dt) for status, dt in offsets.items()}


def test_phase_durations_of_a_completed_run() -> None:
    got = phase_durations(stamps(Queued=0, Preparing=2, Running=2.5, Finalizing=12.5, Completed=13))
    assert got == pytest.approx({"queue_wait": 2, "preparing": 0.5, "running": 10, "finalizing": 0.5})


def test_phase_durations_skip_phases_never_left_or_backwards() -> None:
    assert phase_durations(stamps(Queued=0, Canceled=5)) == {}  # canceled while queued: no phase ended
    failed_preparing = phase_durations(stamps(Queued=0, Preparing=1, Finalizing=3, Failed=4))
    assert failed_preparing == pytest.approx({"queue_wait": 1, "finalizing": 1})  # no Running: no run time
    assert "queue_wait" not in phase_durations(stamps(Queued=5, Preparing=1))
    assert phase_durations({"Queued": "not a time", "Preparing": now_iso(T0)}) == {}


class _Redis:
    """The few Redis calls the controller's scaling path and Telemetry's constructor make."""

    def __init__(self) -> None:
        self.kv: dict[str, str] = {}
        self.hashes: dict[str, dict[str, str]] = {}

    def xrevrange(self, *_a: Any, **_k: Any) -> list[Any]:
        return []

    def set(self, key: str, value: str, **_k: Any) -> bool:
        self.kv[key] = value
        return True

    def hset(self, key: str, field: str, value: str) -> int:
        self.hashes.setdefault(key, {})[field] = value
        return 1

    def pipeline(self, **_k: Any) -> _Redis:
        return self

    def lpush(self, *_a: Any) -> None: ...

    def ltrim(self, *_a: Any) -> None: ...

    def execute(self) -> list[Any]:
        return []


class _WS:
    def __init__(self) -> None:
        self.redis = _Redis()


class _Provider:
    name = "fake"

    def __init__(self) -> None:
        self.started: list[int] = []

    def start_nodes(self, pool: PoolSpec, count: int) -> list[str]:
        self.started.append(count)
        return [f"node-{pool.name}-{i}" for i in range(count)]

    def stop_node(self, pool: PoolSpec, node: str) -> None:
        raise AssertionError("not expected")

    def list_nodes(self, pool: PoolSpec) -> list[str]:
        return []


def test_counts_transitions() -> None:
    reg = CollectorRegistry()
    t = Telemetry(_WS(), registry=reg)  # type: ignore[arg-type]
    done = stamps(Queued=0, Preparing=1, Running=2, Finalizing=5, Completed=6)
    t.apply({"pool": "cpu", "status": "Queued", "outcome": "node-lost", "timestamps": "{}"})
    t.apply({"pool": "cpu", "status": "Completed", "outcome": "completed", "timestamps": json.dumps(done)})
    t.apply({"pool": "cpu", "status": "Canceled", "outcome": "", "timestamps": json.dumps(stamps(Queued=0))})
    t.node_lost_in("cpu")

    def get(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    assert get("cluster_run_attempts_total", pool="cpu", outcome="node-lost") == 1
    assert get("cluster_run_attempts_total", pool="cpu", outcome="completed") == 1
    assert get("cluster_run_attempts_total", pool="cpu", outcome="canceled") == 0  # a queued cancel: no attempt
    assert get("cluster_runs_finished_total", pool="cpu", status="completed") == 1
    assert get("cluster_runs_finished_total", pool="cpu", status="canceled") == 1
    assert get("cluster_runs_finished_total", pool="cpu", status="failed") == 0
    assert get("cluster_node_lost_total", pool="cpu") == 1
    for phase in PHASES:
        assert get("cluster_run_duration_seconds_count", pool="cpu", phase=phase) == 1
    assert get("cluster_run_duration_seconds_sum", pool="cpu", phase="running") == pytest.approx(3)
    t.after_tick(0.02, ok=False)
    assert get("cluster_controller_tick_errors_total") == 1
    assert get("cluster_controller_last_tick_timestamp_seconds") == 0  # never a successful tick


def _observation(spec: PoolSpec, queued: int) -> PoolObservation:
    idle = NodeView(name="static-1", state=NodeState.IDLE, static=True, idle_since=T0 - 999)
    return PoolObservation(pool=spec, nodes=(idle,), queued=queued, running=0, now=T0)


@pytest.mark.parametrize(("config", "starts"), [
    (ControllerConfig(), True),
    (ControllerConfig(autoscale=False), False),
    (ControllerConfig(manual_pools=frozenset({"cpu"})), False),
    (ControllerConfig(manual_pools=frozenset({"gpu"})), True),
])
def test_autoscaling_switch(config: ControllerConfig, starts: bool) -> None:
    ws, provider = _WS(), _Provider()
    ctl = Controller(ws, provider, config)  # type: ignore[arg-type]
    spec = PoolSpec(name="cpu", min_nodes=0, max_nodes=4)
    ctl._scale(spec, _observation(spec, queued=3), T0)
    published = json.loads(ws.redis.kv["cluster:pool:cpu:status"])
    assert published["targetNodeCount"] == 3  # what it would want is published either way
    assert provider.started == ([2] if starts else [])
    assert published["decision"]["start"] == (2 if starts else 0)
    assert ("autoscaling is off" in published["decision"]["reason"]) is not starts
    assert ctl.autoscales("cpu") is starts


def test_controller_flags() -> None:
    args = build_parser().parse_args(["controller", "--no-autoscale-pool", "a", "--no-autoscale-pool", "b",
                                      "--metrics-port", "9100", "--metrics-host", "0.0.0.0"])
    assert args.no_autoscale_pool == ["a", "b"] and not args.no_autoscale
    assert args.metrics_port == 9100 and args.metrics_host == "0.0.0.0"
    defaults = build_parser().parse_args(["controller"])
    assert defaults.metrics_port is None and defaults.metrics_host == "127.0.0.1"


BASE = {"CLUSTER_REDIS_URL": "redis://:p@h:6379/0", "CLUSTER_S3_ENDPOINT": "s3:9000",
        "CLUSTER_S3_ACCESS_KEY": "a", "CLUSTER_S3_SECRET_KEY": "s"}


def test_metrics_port_setting() -> None:
    assert ENV_VARS["metrics_port"] == "CLUSTER_METRICS_PORT"
    settings = Settings.from_env({**BASE, "CLUSTER_METRICS_PORT": "9100"})
    assert settings is not None and settings.metrics_port == 9100
    unset = Settings.from_env(BASE)
    assert unset is not None and unset.metrics_port == 0
    for bad in ("http", "70000", "-1"):
        with pytest.raises(ConfigError, match="metrics_port"):
            Settings.from_env({**BASE, "CLUSTER_METRICS_PORT": bad})


def test_a_scrape_that_cannot_read_the_state_says_so() -> None:
    from prometheus_client import generate_latest

    class _Down(_Redis):
        def smembers(self, *_a: Any) -> Any:
            raise ConnectionError("redis is down")

    class _Store:
        def list(self, *_a: Any) -> list[Any]:
            return []

    ws = _WS()
    ws.redis = _Down()
    ws.store = _Store()  # type: ignore[attr-defined]
    reg = CollectorRegistry()
    Telemetry(ws, registry=reg)  # type: ignore[arg-type]
    text = generate_latest(reg).decode()
    assert "cluster_metrics_state_ok 0.0" in text
    assert "cluster_controller_tick_errors_total 0.0" in text  # the rest is still served
    assert "cluster_runs{" not in text


def test_a_taken_metrics_port_leaves_the_controller_running(capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    from types import SimpleNamespace

    from cluster.cli.pools import _serve_metrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ctl = Controller(_WS(), _Provider())  # type: ignore[arg-type]
        ctl.ws.settings = SimpleNamespace(metrics_port=port)  # type: ignore[attr-defined]
        assert _serve_metrics(ctl, SimpleNamespace(metrics_port=None, metrics_host="127.0.0.1")) is None
    assert ctl.telemetry is None
    out = capsys.readouterr().out
    assert f"cannot serve metrics on 127.0.0.1:{port}" in out and "running without metrics" in out


def test_nodes_by_state_published_or_from_heartbeats() -> None:
    from cluster.telemetry import _node_counts

    now = T0
    heartbeats = {
        "a": {"pool": "p", "state": "idle", "heartbeat": str(now - 1)},
        "b": {"pool": "p", "state": "busy", "heartbeat": str(now - 2)},
        "c": {"pool": "p", "state": "idle", "heartbeat": str(now - 1), "drain": "1"},
        "d": {"pool": "p", "state": "busy", "heartbeat": str(now - 60)},  # silent: lost
        "e": {"pool": "other", "state": "idle", "heartbeat": str(now)},
    }
    assert _node_counts(None, heartbeats, "p", now) == {"idle": 1, "busy": 1, "draining": 1, "lost": 1}
    published = {"nodes": {"starting": 2, "idle": 0, "busy": 1, "draining": 0, "lost": 0}}
    assert _node_counts(published, heartbeats, "p", now)["starting"] == 2  # the controller's view wins
