"""`cluster worker|submit|runs|models`: nodes, runs and the model registry."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from cluster import validation
from cluster.cli.output import table
from cluster.workspace import Workspace

#: the `cluster worker` command is the worker package's: ``module:function(args) -> exit code``
WORKER_COMMAND = "tasks.cli:cmd_worker"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("worker", help="run a node: one Celery worker with one slot, serving a pool",
                       description="Join a pool by hand (a static node: used, never scaled away). Runs until "
                       "stopped with Ctrl-C / SIGTERM; a run in progress finishes first.")
    p.add_argument("--pool", help="the pool (compute target) whose queue this node consumes (required)")
    p.add_argument("--node-name", help="default: <pool>-<host>-<pid>")
    p.add_argument("--work-dir", type=Path, help="where run directories live (default: ~/.cache/cluster/work)")
    p.add_argument("--cache-dir", type=Path, help="node cache: snapshots, environments, mounted data "
                   "(default: ~/.cache/cluster/cache)")
    p.add_argument("--size", help="node size (limits for each run's process); see docs")
    p.add_argument("--cpus", help="pin this node and its runs to these CPUs, e.g. 0 or 2,3 (the local provider "
                   "gives each node its own)")
    p.add_argument("--managed", action="store_true", help=argparse.SUPPRESS)  # started by the controller
    # a warm spare of the local provider: loads everything, then waits for this file to say which node it becomes
    p.add_argument("--spare-file", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--remote-control", action="store_true",
                   help="answer Celery's inspect/control broadcasts, so Flower can list this node and its queue. Off "
                   "by default: with it, anyone who can write to the broker can shut the node down")
    p.add_argument("--visibility-timeout", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--config", help="path of config.json (default: discovered)")
    p.add_argument("--isolation", choices=["required", "best-effort"], default="best-effort",
                   help="required: refuse to run scripts when no sandbox/uid isolation is available")
    p.add_argument("--network", choices=["host", "none"], default="host",
                   help="none: each run gets a private network namespace (loopback only)")
    p.add_argument("--max-processes", type=int, default=1024, help="processes/threads per run (fork bombs)")
    p.add_argument("--max-output-bytes", type=int, default=10 * 1024**3, help="bytes uploaded per run")
    p.add_argument("--max-output-files", type=int, default=10_000, help="files uploaded per run")
    p.add_argument("--max-cache-bytes", type=int, default=20 * 1024**3,
                   help="cap on the node cache (snapshots, environments, mounted data); least recently used "
                        "entries no run holds are removed (default: 20 GiB)")
    p.add_argument("--no-bwrap", action="store_true", help="do not use bubblewrap (fall back to uid or none)")
    p.add_argument("--checkpoint-seconds", type=float, default=5.0,
                   help="upload a running script's ./outputs/checkpoints this often (0: only when it ends)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("submit", help="submit a script in a source directory as a run")
    p.add_argument("--experiment", "-e", required=True)
    p.add_argument("--source-dir", "-d", type=Path, default=Path("."))
    p.add_argument("--script", "-s", required=True, help="entry script, relative to the source dir")
    p.add_argument("--pool", "-p", default="default", help="compute target (pool) name")
    p.add_argument("--pip", action="append", default=[], help="a pip package for the run (repeatable)")
    p.add_argument("--conda", action="append", default=[], help="a conda package, installed with pip (repeatable)")
    p.add_argument("--max-seconds", type=float, help="time limit for the entry script")
    p.add_argument("--wait", action="store_true", help="wait for completion, streaming the log")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments for the script (after --)")
    p.set_defaults(func=cmd_submit)

    runs = sub.add_parser("runs", help="list and inspect runs").add_subparsers(dest="runs_cmd", metavar="ACTION")
    runs.required = True
    p = runs.add_parser("list", help="runs, newest first")
    p.add_argument("--experiment", "-e", help="default: every experiment")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--sort-by", metavar="METRIC", help="best first by this metric's last value (loss-like names "
                   "-- loss, error, rmse, mae -- lowest first; --ascending/--descending to choose)")
    order = p.add_mutually_exclusive_group()
    order.add_argument("--ascending", dest="ascending", action="store_const", const=True, default=None)
    order.add_argument("--descending", dest="ascending", action="store_const", const=False)
    p.add_argument("--where", action="append", default=[], metavar="EXPR",
                   help="keep runs whose metric matches, e.g. 'accuracy>0.9' (repeatable: all must match)")
    p.add_argument("--tag", action="append", default=[], metavar="K=V", help="keep runs with this tag (K alone: "
                   "the tag is set; repeatable)")
    p.add_argument("--status", help="keep runs with this status, e.g. Completed")
    p.set_defaults(func=cmd_runs_list)
    p = runs.add_parser("resubmit", help="run a run again: same snapshot, environment, data; new arguments "
                        "optional: cluster runs resubmit [--wait] ID [-- ARGS]")
    p.add_argument("run_id")
    p.add_argument("args", nargs=argparse.REMAINDER, help="new arguments for the script (after --)")
    p.add_argument("--wait", action="store_true", help="wait for completion, streaming the log")
    p.set_defaults(func=cmd_runs_resubmit)
    for name, func, text in (("show", cmd_runs_show, "details of a run (JSON)"),
                             ("metrics", cmd_runs_metrics, "metrics of a run (JSON)"),
                             ("cancel", cmd_runs_cancel, "cancel a queued or running run"),
                             ("files", cmd_runs_files, "files of a run")):
        p = runs.add_parser(name, help=text)
        p.add_argument("run_id")
        p.set_defaults(func=func)
    p = runs.add_parser("logs", help="print a run's log; -f follows it live")
    p.add_argument("run_id")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the run ends")
    p.add_argument("--after", default="0-0", metavar="ENTRY",
                   help="with -f: resume after this log entry (printed when a follow is interrupted)")
    p.set_defaults(func=cmd_runs_logs)
    p = runs.add_parser("download", help="download a run's files")
    p.add_argument("run_id")
    p.add_argument("--prefix", help="only files under this prefix, e.g. outputs/")
    p.add_argument("--dest", type=Path, default=Path("."))
    p.set_defaults(func=cmd_runs_download)

    models = sub.add_parser("models", help="the model registry").add_subparsers(dest="models_cmd", metavar="ACTION")
    models.required = True
    p = models.add_parser("list", help="registered models and versions")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_models_list)
    p = models.add_parser("show", help="one model version (JSON)")
    p.add_argument("name")
    p.add_argument("--version", type=int)
    p.set_defaults(func=cmd_models_show)
    p = models.add_parser("download", help="download a model version's files")
    p.add_argument("name")
    p.add_argument("--version", type=int)
    p.add_argument("--dest", type=Path, default=Path("."))
    p.set_defaults(func=cmd_models_download)


# ---- helpers ------------------------------------------------------------------------------------

def _ws() -> Workspace:
    return Workspace.from_config()


def _run(ws: Workspace, run_id: str) -> Any:
    from cluster import Experiment, Run

    record = ws.runs.record(validation.run_id(run_id))
    return Run(Experiment(ws, record.experiment), run_id)


# ---- commands -----------------------------------------------------------------------------------

def cmd_worker(args: argparse.Namespace) -> int:
    """The worker package's command (``tasks.cli``), loaded by name: the SDK imports no Celery
    (docs/architecture.md)."""
    module_name, _, attr = WORKER_COMMAND.partition(":")
    command = getattr(importlib.import_module(module_name), attr)
    return int(command(args))


def cmd_submit(args: argparse.Namespace) -> int:
    from cluster import Experiment, ScriptRunConfig

    script_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    env = {"pip_packages": args.pip, "conda_packages": args.conda}
    # the same checks as the SDK's, before any server is contacted
    config = ScriptRunConfig(args.source_dir, args.script, arguments=script_args, compute_target=args.pool,
                             environment=env, max_run_duration_seconds=args.max_seconds)
    validation.name("experiment", args.experiment)
    run = Experiment(_ws(), args.experiment).submit(config)
    print(run.id)
    if args.wait:
        run.wait_for_completion(show_output=True)
    return 0


def cmd_runs_list(args: argparse.Namespace) -> int:
    from cluster import Experiment, runinfo

    validation.whole_number("--limit", args.limit, minimum=1)
    if args.experiment is not None:
        validation.name("experiment", args.experiment)
    wheres = [runinfo.parse_where(w) for w in args.where]
    tags = runinfo.tag_filter({k: (v if sep else None) for k, sep, v in (t.partition("=") for t in args.tag)})
    ws = _ws()
    experiments = [args.experiment] if args.experiment else ws.runs.list_experiments()
    rows, keys = [], []
    for name in experiments:
        for run in Experiment(ws, name).get_runs(include_children=True, status=args.status):
            rec = ws.runs.record(run.id)
            if args.tag and not tags(runinfo.get_tags(ws.store, rec.prefix, rec)):
                continue
            metrics = run.get_metrics() if (wheres or args.sort_by) else {}
            if not all(w(metrics) for w in wheres):
                continue
            started = rec.timestamps.get("Queued", "")[:19].replace("T", " ")
            row = [run.id, rec.status.value, rec.pool, str(rec.attempt), started, rec.parent_id or "-"]
            if args.sort_by:
                value = runinfo.last_value(metrics.get(args.sort_by))
                row.append("-" if value is None else f"{value:g}" if isinstance(value, float) else str(value))
                keys.append(value if isinstance(value, int | float) and not isinstance(value, bool) else None)
            rows.append(row)
    header = ["RUN", "STATUS", "POOL", "ATTEMPT", "SUBMITTED (UTC)", "PARENT"]
    if args.sort_by:
        ascending = args.ascending if args.ascending is not None else _lower_is_better(args.sort_by)
        with_value = sorted((k if ascending else -k, r) for k, r in zip(keys, rows, strict=True) if k is not None)
        rows = [r for _k, r in with_value] + [r for k, r in zip(keys, rows, strict=True) if k is None]
        header.append(args.sort_by.upper())
    else:
        rows.sort(key=lambda r: r[4], reverse=True)
    if not rows:
        print("no runs match" if (args.where or args.tag or args.status) else "no runs yet")
        return 0
    table(rows[: args.limit], header)
    return 0


def _lower_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in ("loss", "error", "rmse", "mae", "mse"))


def cmd_runs_resubmit(args: argparse.Namespace) -> int:
    script_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    run = _run(_ws(), args.run_id).resubmit(arguments=script_args or None)
    print(run.id)
    if args.wait:
        run.wait_for_completion(show_output=True)
    return 0


def cmd_runs_show(args: argparse.Namespace) -> int:
    ws = _ws()
    print(json.dumps(_run(ws, args.run_id).get_details(), indent=2))
    return 0


def cmd_runs_metrics(args: argparse.Namespace) -> int:
    print(json.dumps(_run(_ws(), args.run_id).get_metrics(), indent=2, ensure_ascii=False))
    return 0


def cmd_runs_cancel(args: argparse.Namespace) -> int:
    outcome = _run(_ws(), args.run_id).cancel()
    messages = {"canceled": "canceled (it was queued and will never start)",
                "requested": "cancel requested: the node is stopping the run"}
    print(messages.get(outcome, f"nothing to cancel: the run is already {outcome}"))
    return 0


def cmd_runs_files(args: argparse.Namespace) -> int:
    for name in _run(_ws(), args.run_id).get_file_names():
        print(name)
    return 0


def cmd_runs_logs(args: argparse.Namespace) -> int:
    ws = _ws()
    run = _run(ws, args.run_id)
    if args.follow:
        last = args.after
        try:
            for entry, line in run.stream_log(after=args.after):
                print(line, flush=True)
                last = entry
        except KeyboardInterrupt:
            print(f"\ninterrupted; resume with: cluster runs logs -f {run.id} --after {last}", file=sys.stderr)
            return 130
        return 0
    from cluster import logstream

    lines = logstream.lines_so_far(ws.redis, ws.store, run.id, run.files_prefix())
    print("\n".join(lines))
    return 0


def cmd_runs_download(args: argparse.Namespace) -> int:
    validation.local_dir_target("--dest", args.dest)
    for path in _run(_ws(), args.run_id).download_files(prefix=args.prefix, output_directory=args.dest):
        print(path)
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from cluster import Model

    models = Model.list(_ws(), args.name)
    if not models:
        print("no models registered")
        return 0
    table([[m.name, str(m.version), m.run_id or "", m.created_time[:19].replace("T", " ")] for m in models],
           ["NAME", "VERSION", "RUN", "CREATED (UTC)"])
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    from cluster import Model

    m = Model(_ws(), args.name, args.version)
    print(json.dumps(m._record.to_dict(), indent=2))
    return 0


def cmd_models_download(args: argparse.Namespace) -> int:
    from cluster import Model

    validation.local_dir_target("--dest", args.dest)
    print(Model(_ws(), args.name, args.version).download(args.dest, exist_ok=True))
    return 0
