"""`cluster worker`: a node's command line, behind the SDK's CLI.

``cluster worker`` parses its arguments in :mod:`cluster.cli.runs` and calls :func:`cmd_worker` here by name,
so the SDK never imports Celery or this package; everything a node needs is imported from here.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from cluster import validation
from cluster.errors import UsageError
from cluster.settings import Settings


def _parse_cpus(text: str | None) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        cpus = tuple(sorted({int(part) for part in text.split(",")}))
    except ValueError:
        raise UsageError(f"--cpus {text!r} is not a list of CPU numbers", hint="e.g. --cpus 0 or --cpus 2,3") from None
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(cpus)
    if not cpus or not set(cpus) <= allowed:
        raise UsageError(f"--cpus {text!r}: this process may use CPUs {sorted(allowed)} only",
                         hint="pick CPUs from that list")
    return cpus


def _become_node(args: argparse.Namespace) -> None:
    """A warm spare: import what a node needs now, then wait for the provider's assignment (a JSON file with
    pool, node_name, size, cpus, work_dir) and take it as if given on the command line."""
    import celery.apps.worker
    import celery.worker.consumer  # noqa: F401
    import kombu.transport.redis  # noqa: F401

    import tasks.node
    import tasks.worker  # noqa: F401

    path: Path = args.spare_file
    while not path.exists():
        time.sleep(0.01)
    assignment = json.loads(path.read_text())
    path.unlink()
    args.pool, args.node_name, args.size = assignment["pool"], assignment["node_name"], assignment.get("size")
    args.cpus = assignment.get("cpus") or None
    args.work_dir = Path(assignment["work_dir"]) if assignment.get("work_dir") else args.work_dir
    for key in ("isolation", "network", "max_output_bytes", "max_output_files", "max_cache_bytes",  # the pool's
                "checkpoint_seconds"):
        if assignment.get(key) is not None:
            setattr(args, key, assignment[key])
    args.managed = True


def cmd_worker(args: argparse.Namespace) -> int:
    from tasks.process import ResourceLimits
    from tasks.worker import WorkerOptions, default_name, run_worker

    if args.spare_file:
        _become_node(args)
    if not args.pool:
        raise UsageError("which pool does this node serve?", hint="cluster worker --pool NAME")
    validation.name("pool", args.pool)
    if args.node_name is not None:
        validation.text("--node-name", args.node_name)
    if args.visibility_timeout is not None:
        validation.positive_number("--visibility-timeout", args.visibility_timeout)
    if validation.finite_number("--checkpoint-seconds", args.checkpoint_seconds) < 0:
        raise UsageError(f"--checkpoint-seconds must be 0 or more, got {args.checkpoint_seconds:g}",
                         hint="0 uploads ./outputs/checkpoints only when the script ends")
    for flag, folder in (("--work-dir", args.work_dir), ("--cache-dir", args.cache_dir)):
        if folder is not None:
            validation.local_dir_target(flag, folder)
    settings = Settings.discover(args.config)
    home = Path.home() / ".cache" / "cluster"
    limits = None
    if args.size:
        from cluster.sizes import get_size

        size = get_size(args.size)
        limits = ResourceLimits(memory_bytes=size.memory_bytes, cpu_count=size.cpus)
    from tasks.rundir import OutputCaps
    from tasks.sandbox import SandboxPolicy

    policy = SandboxPolicy(isolation=args.isolation, network=args.network, max_processes=args.max_processes)
    caps = OutputCaps(max_bytes=args.max_output_bytes, max_files=args.max_output_files)
    hidden = (Path(settings.source).parent,) if Path(settings.source).is_file() else ()
    opts = WorkerOptions(pool=args.pool, name=args.node_name or default_name(args.pool),
                         # absolute: the sandbox binds them by path, from another working directory
                         work_dir=(args.work_dir or home / "work").resolve(),
                         cache_dir=(args.cache_dir or home / "cache").resolve(),
                         static=not args.managed, limits=limits, cpus=_parse_cpus(args.cpus), policy=policy,
                         output_caps=caps, hidden=hidden, remote_control=args.remote_control,
                         use_bwrap=not args.no_bwrap, max_cache_bytes=args.max_cache_bytes,
                         checkpoint_seconds=args.checkpoint_seconds,
                         **({"visibility_timeout": args.visibility_timeout} if args.visibility_timeout else {}))
    run_worker(settings, opts)  # prints the node's first line: name, pool, isolation level
    return 0
