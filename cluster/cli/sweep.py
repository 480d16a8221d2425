"""`cluster sweep submit|show|list|cancel`: hyperparameter sweeps from a small YAML/JSON spec
(the format: :mod:`cluster.sweep.spec`; the plot: :mod:`cluster.sweep.plot`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cluster.errors import ClusterError, NotFoundError, UsageError

if TYPE_CHECKING:
    from cluster.sweep import HyperDriveRun
    from cluster.workspace import Workspace

#: the spec file's format, shown by `cluster sweep submit --help` (the parser: cluster/sweep/spec.py)
SPEC_FORMAT = """A spec file (YAML or JSON; paths relative to the file)::

    experiment: sklearn-mnist-sweep
    source_directory: sklearn-mnist          # estimator fields, at the top level or under `estimator:`
    entry_script: train.py
    script_params: {"--data-folder": {"mount": ""}, "--train-limit": 2000}   # or arguments: [...]
    compute_target: cpucluster
    pip_packages: []
    search_space:                            # an expression dict, a list (= choice) or "loguniform(-5, 1)"
      "--regularization": {"type": "loguniform", "min_exp": -5, "max_exp": 1}
    sampling: {type: random, seed: 7}        # grid | random | bayesian (seed, n_startup_trials)
    policy: {type: bandit, slack_factor: 0.1, evaluation_interval: 1}
    primary_metric_name: accuracy
    primary_metric_goal: maximize
    max_total_runs: 16
    max_concurrent_runs: 4
    max_duration_minutes: 60                 # optional, as is goal_threshold

A script argument may be a data reference on the default datastore: ``{"mount": "path"}`` or
``{"download": "path"}``.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sweeps = sub.add_parser("sweep", help="hyperparameter sweeps (HyperDrive)",
                            description="Submit, inspect and cancel sweeps; the controller drives them, so they "
                            "go on after this command exits.").add_subparsers(dest="sweep_cmd", metavar="ACTION")
    sweeps.required = True
    p = sweeps.add_parser("submit", help="submit a sweep from a YAML/JSON spec file")
    p.add_argument("spec", type=Path, help="the spec file (its format is below)")
    p.add_argument("--experiment", "-e", help="experiment name (default: the spec's `experiment`)")
    p.add_argument("--wait", action="store_true", help="wait for the sweep to end, printing progress")
    p.set_defaults(func=cmd_submit)
    p.epilog = SPEC_FORMAT
    p.formatter_class = argparse.RawDescriptionHelpFormatter

    p = sweeps.add_parser("show", help="a sweep's children: parameters, metric, status, duration; writes a plot")
    p.add_argument("sweep_id")
    p.add_argument("--plot", type=Path, help="PNG of the primary metric against each parameter (default: <id>.png)")
    p.add_argument("--no-plot", action="store_true", help="do not write the plot")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.set_defaults(func=cmd_show)

    p = sweeps.add_parser("list", help="sweeps, newest first")
    p.add_argument("--experiment", "-e", help="only this experiment's sweeps")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(func=cmd_list)

    p = sweeps.add_parser("cancel", help="stop sampling and cancel every child still queued or running")
    p.add_argument("sweep_id")
    p.set_defaults(func=cmd_cancel)


# ---- commands -----------------------------------------------------------------------------------

def _ws() -> Workspace:
    from cluster.workspace import Workspace

    return Workspace.from_config()


def _sweep(ws: Workspace, sweep_id: str) -> HyperDriveRun:
    from cluster.sweep import HyperDriveRun

    return HyperDriveRun.from_id(ws, sweep_id)


def cmd_submit(args: argparse.Namespace) -> int:
    from cluster.experiment import Experiment
    from cluster.sweep.spec import config_from_spec, read_spec_file

    data = read_spec_file(args.spec)
    config, experiment, tags = config_from_spec(data, args.spec.resolve().parent)
    name = args.experiment or experiment
    if not name:
        raise UsageError("no experiment name", hint="set `experiment:` in the spec or pass --experiment")
    from cluster import layout

    name = layout.check_name("experiment", str(name))
    ws = _ws()
    run = Experiment(ws, str(name)).submit(config, tags=tags)
    print(run.id)
    if args.wait:
        run.wait_for_completion(show_output=True)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from cluster.sweep.run import format_table

    ws = _ws()
    run = _sweep(ws, args.sweep_id)
    summary = run.get_summary(live=True)
    live = summary["children"]
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        spec = run.spec
        counts = ", ".join(f"{v} {k.lower().replace('_', ' ')}" for k, v in summary.get("counts", {}).items()
                           if k != "children" and v)
        print(f"sweep {run.id}  ({run.experiment.name})\nstatus: {run.get_status()}"
              + (f" ({summary['end_reason']})" if summary.get("end_reason") else ""))
        print(f"primary metric: {spec.primary_metric_name} ({spec.goal.value}); {spec.sampling.kind} sampling; "
              f"policy {spec.policy.kind}; {len(live)} of max {spec.max_total_runs} children"
              + (f" ({counts})" if counts else ""))
        print()
        print(format_table(live, spec.primary_metric_name))
    if not args.no_plot:
        from cluster.sweep.plot import write_plot

        path = write_plot(summary, args.plot or Path(f"{run.id}.png"))
        print(f"plot: {path}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from cluster import validation
    from cluster.experiment import run_sort_key
    from cluster.sweep import state

    validation.whole_number("--limit", args.limit, minimum=1)
    ws = _ws()
    ids = [info.key.rsplit("/", 1)[-1] for info in ws.store.list(state.ALL_SWEEPS)]
    ids.sort(key=run_sort_key, reverse=True)
    rows = []
    for sweep_id in ids:
        try:
            record = ws.runs.record(sweep_id)
        except ClusterError:  # a sweep whose records were removed
            continue
        if args.experiment and record.experiment != args.experiment:
            continue
        try:
            summary = ws.store.get_json(record.prefix + state.SUMMARY)
        except NotFoundError:  # the controller has not written one yet
            summary = {}
        best = (summary.get("best") or {}).get("value")
        counts = summary.get("counts", {})
        done = sum(counts.get(s, 0) for s in ("Completed", "Failed", "Canceled"))
        rows.append([sweep_id, record.experiment, record.status.value, f"{done}/{counts.get('children', 0)}",
                     "-" if best is None else f"{best:.6g}",
                     (record.timestamps.get("Running") or "")[:19].replace("T", " ")])
        if len(rows) >= args.limit:
            break
    if not rows:
        print("no sweeps yet")
        return 0
    header = ["SWEEP", "EXPERIMENT", "STATUS", "DONE", "BEST", "SUBMITTED (UTC)"]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    outcome = _sweep(_ws(), args.sweep_id).cancel()
    if outcome == "requested":
        print("cancel requested: no new children; the queued and running ones are being canceled")
    else:
        print(f"nothing to cancel: the sweep is already {outcome}")
    return 0
