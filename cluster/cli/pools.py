"""`cluster controller|pools|nodes`: autoscaled node pools."""

from __future__ import annotations

import argparse
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster import validation
from cluster.cli.output import table
from cluster.errors import UsageError
from cluster.nodes import NODE_LOST_SECONDS, list_nodes
from cluster.settings import Settings
from cluster.workspace import Workspace


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("controller", help="run the controller: autoscaling, node-loss recovery, sweeps",
                       description="Long-running. Scales every pool between min and max nodes, re-queues runs whose "
                       "node was lost, recovers after restarts. `cluster up` starts one for the embedded cluster.")
    p.add_argument("--config", help="path of config.json (default: discovered)")
    p.add_argument("--provider", choices=["local", "kubernetes"], default="local")
    p.add_argument("--state-dir", type=Path, help="local provider: the embedded cluster's state dir "
                   "(default: the config file's folder)")
    p.add_argument("--namespace", default=None, help="kubernetes provider: namespace for node pods")
    p.add_argument("--image", default="cluster:latest", help="kubernetes provider: node image")
    p.add_argument("--node-lost-seconds", type=float, default=NODE_LOST_SECONDS,
                   help="heartbeat silence before a node is lost")
    p.add_argument("--max-infra-attempts", type=int, default=3, help="node-lost retries before a run fails")
    p.add_argument("--tick", type=float, default=0.5, help=argparse.SUPPRESS)
    p.add_argument("--spare-nodes", type=int, default=1, metavar="N",
                   help="local provider: keep N warm node processes ready, so a pool scaling up from zero gets its "
                   "first node in well under a second (each costs one idle Python process; 0 turns this off)")
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port "
                   "(default: metrics_port / CLUSTER_METRICS_PORT from the config; 0: no metrics)")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics endpoint binds "
                   "(default: 127.0.0.1; 0.0.0.0 in a container, for Prometheus)")
    p.add_argument("--no-autoscale", action="store_true", help="start and drain no node for any pool (an "
                   "external scaler such as KEDA does); lost nodes, pool deletion and sweeps are still handled")
    p.add_argument("--no-autoscale-pool", action="append", default=[], metavar="POOL",
                   help="like --no-autoscale, for this pool only (repeatable)")
    p.set_defaults(func=cmd_controller)

    pools = sub.add_parser("pools", help="compute targets (autoscaled node pools)").add_subparsers(
        dest="pools_cmd", metavar="ACTION")
    pools.required = True
    p = pools.add_parser("list", help="pools with node counts")
    p.set_defaults(func=cmd_pools_list)
    p = pools.add_parser("show", help="a pool's status and recent scaling events")
    p.add_argument("name")
    p.set_defaults(func=cmd_pools_show)
    p = pools.add_parser("create", help="create a pool")
    p.add_argument("name")
    p.add_argument("--vm-size", default="small", help="node size: small, medium, large (or Azure names)")
    p.add_argument("--min-nodes", type=int, default=0)
    p.add_argument("--max-nodes", type=int, default=4)
    p.add_argument("--idle-seconds", type=float, default=120, help="idle time before a node is scaled away")
    p.add_argument("--isolation", choices=["required", "best-effort"], default=None,
                   help="required: nodes refuse to run scripts unisolated (default: best-effort locally, "
                        "required on Kubernetes)")
    p.add_argument("--network", choices=["host", "none"], default="host", help="none: no network for runs")
    p.set_defaults(func=cmd_pools_create)
    p = pools.add_parser("update", help="change a pool's bounds")
    p.add_argument("name")
    p.add_argument("--min-nodes", type=int)
    p.add_argument("--max-nodes", type=int)
    p.add_argument("--idle-seconds", type=float)
    p.set_defaults(func=cmd_pools_update)
    p = pools.add_parser("delete", help="drain and remove a pool (its queued runs are canceled)")
    p.add_argument("name")
    p.set_defaults(func=cmd_pools_delete)

    p = sub.add_parser("nodes", help="every node: pool, state, current run, last heartbeat")
    p.add_argument("--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C")
    p.set_defaults(func=cmd_nodes)


def cmd_controller(args: argparse.Namespace) -> int:
    from cluster.controller import Controller, ControllerConfig
    from cluster.objectstore import ObjectStore
    from cluster.providers.base import Provider

    validation.positive_number("--node-lost-seconds", args.node_lost_seconds)
    validation.whole_number("--max-infra-attempts", args.max_infra_attempts, minimum=1)
    validation.positive_number("--tick", args.tick)
    settings = Settings.discover(args.config)
    ws = Workspace(settings)
    if args.provider == "kubernetes":
        from cluster.providers.kubernetes import KubernetesProvider

        kw = {"namespace": args.namespace} if args.namespace else {}
        provider: Provider = KubernetesProvider.from_in_cluster(image=args.image, **kw)
    else:
        from cluster.providers.local import LocalProvider

        state_dir = args.state_dir or Path(settings.source).parent
        if args.spare_nodes < 0:
            raise UsageError(f"--spare-nodes must be 0 or more, got {args.spare_nodes}")
        provider = LocalProvider(state_dir, spares=args.spare_nodes)
    for bucket in (settings.data_bucket, settings.cluster_bucket):  # a fresh deployment has none yet
        ObjectStore(settings, bucket).ensure_bucket()
    cfg = ControllerConfig(tick_seconds=args.tick, node_lost_seconds=args.node_lost_seconds,
                           max_infra_attempts=args.max_infra_attempts, autoscale=not args.no_autoscale,
                           manual_pools=frozenset(args.no_autoscale_pool))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    controller = Controller(ws, provider, cfg)
    scaling = "off for every pool" if args.no_autoscale else (
        f"off for {', '.join(sorted(cfg.manual_pools))}" if cfg.manual_pools else "on")
    print(f"controller {provider.name} provider, workspace {ws.name}, autoscaling {scaling}", flush=True)
    stop_metrics = _serve_metrics(controller, args)
    try:
        controller.run_forever(stop)
    finally:
        if stop_metrics is not None:
            stop_metrics()
    return 0


def _serve_metrics(controller: Any, args: argparse.Namespace) -> Callable[[], None] | None:
    """Start the Prometheus endpoint; a port we cannot bind is reported, and the controller runs on."""
    from cluster.errors import ClusterError
    from cluster.telemetry import Telemetry

    port = controller.ws.settings.metrics_port if args.metrics_port is None else args.metrics_port
    if not port:
        return None
    telemetry = Telemetry(controller.ws, ident=controller.ident, autoscales=controller.autoscales)
    try:
        stop = telemetry.serve(port, args.metrics_host)
    except ClusterError as e:
        print(f"controller: {e.message} ({e.hint}); running without metrics", flush=True)
        return None
    controller.telemetry = telemetry
    print(f"controller metrics on http://{args.metrics_host}:{port}/metrics", flush=True)
    return stop


def _pool_row(ws: Workspace, name: str) -> list[str]:
    from cluster.compute import NodePool

    pool = ws.compute_targets.get(name)
    if not isinstance(pool, NodePool):
        return [name, "?", "?", "?", "?"]
    st = pool.status.serialize()
    nodes = st.get("nodes", {})
    summary = " ".join(f"{k}={v}" for k, v in nodes.items() if v) or "none"
    return [name, pool.vm_size, f"{pool.min_nodes}..{pool.max_nodes}", summary,
            f"{st.get('queuedRuns', 0)}/{st.get('runningRuns', 0)}"]


def cmd_pools_list(args: argparse.Namespace) -> int:
    ws = Workspace.from_config()
    names = sorted(ws.compute_targets)
    if not names:
        print("no pools; create one with `cluster pools create NAME` or ComputeTarget.create(...)")
        return 0
    table([_pool_row(ws, n) for n in names], ["POOL", "SIZE", "NODES", "STATES", "QUEUED/RUNNING"])
    return 0


def cmd_pools_show(args: argparse.Namespace) -> int:
    from cluster.compute import pool_record

    ws = Workspace.from_config()
    pool_record(ws, args.name)
    pool = ws.compute_targets[args.name]
    print(json.dumps(pool.status.serialize(), indent=2))
    print("\nrecent scaling events (newest first):")
    for e in pool.events():
        stamp = time.strftime("%H:%M:%S", time.localtime(e["t"]))
        print(f"  {stamp}  {e['reason']}")
    return 0


def cmd_pools_create(args: argparse.Namespace) -> int:
    from cluster.compute import ComputeTarget, NodePool

    cfg = NodePool.provisioning_configuration(vm_size=args.vm_size, min_nodes=args.min_nodes,
                                              max_nodes=args.max_nodes, idle_seconds_before_scaledown=args.idle_seconds,
                                              isolation=args.isolation, network=args.network)
    validation.name("pool", args.name)
    ws = Workspace.from_config()
    print(ComputeTarget.create(ws, args.name, cfg))
    return 0


def cmd_pools_update(args: argparse.Namespace) -> int:
    from cluster.compute import NodePool, pool_record

    ws = Workspace.from_config()
    pool_record(ws, args.name)
    pool = ws.compute_targets[args.name]
    assert isinstance(pool, NodePool)
    pool.update(min_nodes=args.min_nodes, max_nodes=args.max_nodes, idle_seconds_before_scaledown=args.idle_seconds)
    print(pool)
    return 0


def cmd_pools_delete(args: argparse.Namespace) -> int:
    from cluster.compute import pool_record

    ws = Workspace.from_config()
    pool_record(ws, args.name)
    print(ws.compute_targets[args.name].delete())
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    if args.watch is not None:
        validation.positive_number("--watch", args.watch)
    ws = Workspace.from_config()
    while True:
        rows = [[n.name, n.pool, n.state.value, n.run or "-", f"{n.heartbeat_age:.1f}s ago",
                 "static" if n.static else "managed", n.isolation,
                 (n.host + (f" ({n.address})" if n.address else "")) or "?"] for n in list_nodes(ws)]
        if args.watch:
            print(f"\n{time.strftime('%H:%M:%S')}  {len(rows)} node(s)")
        if rows:
            table(rows, ["NODE", "POOL", "STATE", "RUN", "HEARTBEAT", "KIND", "ISOLATION", "HOST"])
        else:
            print("no nodes")
        if not args.watch:
            return 0
        time.sleep(args.watch)
