"""`cluster sweep submit|show|list|cancel`: hyperparameter sweeps from a small YAML/JSON spec.

A spec file (YAML or JSON; paths relative to the file)::

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

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster.errors import ClusterError, NotFoundError, UsageError

if TYPE_CHECKING:
    from cluster.sweep import HyperDriveConfig, HyperDriveRun
    from cluster.workspace import Workspace

ESTIMATOR_KEYS = ("source_directory", "entry_script", "script_params", "arguments", "compute_target", "pip_packages",
                  "conda_packages", "environment_variables", "max_run_duration_seconds")
TOP_KEYS = {"experiment", "estimator", "search_space", "parameters", "sampling", "policy", "primary_metric_name",
            "primary_metric_goal", "max_total_runs", "max_concurrent_runs", "max_duration_minutes", "goal_threshold",
            "tags", *ESTIMATOR_KEYS}
_SAMPLING_ALIASES = {"grid": "grid", "random": "random", "bayesian": "bayesian", "tpe": "bayesian"}
_POLICY_ALIASES = {"bandit": "bandit", "median": "median_stopping", "median_stopping": "median_stopping",
                   "truncation": "truncation_selection", "truncation_selection": "truncation_selection",
                   "none": "no_termination", "no_termination": "no_termination"}
_POSITIONAL = {"choice": ("options",), "randint": ("upper",), "uniform": ("low", "high"),
               "quniform": ("low", "high", "q"), "loguniform": ("min_exp", "max_exp"),
               "qloguniform": ("min_exp", "max_exp", "q"), "normal": ("mu", "sigma"), "qnormal": ("mu", "sigma", "q")}


def register(sub: argparse._SubParsersAction) -> None:
    sweeps = sub.add_parser("sweep", help="hyperparameter sweeps (HyperDrive)",
                            description="Submit, inspect and cancel sweeps; the controller drives them, so they "
                            "go on after this command exits.").add_subparsers(dest="sweep_cmd", metavar="ACTION")
    sweeps.required = True
    p = sweeps.add_parser("submit", help="submit a sweep from a YAML/JSON spec file")
    p.add_argument("spec", type=Path, help="the spec file (its format is below)")
    p.add_argument("--experiment", "-e", help="experiment name (default: the spec's `experiment`)")
    p.add_argument("--wait", action="store_true", help="wait for the sweep to end, printing progress")
    p.set_defaults(func=cmd_submit)
    p.epilog = __doc__.split("\n", 2)[2] if __doc__ else None
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


# ---- the spec file ------------------------------------------------------------------------------

def read_spec_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot read sweep spec {path}: {e.strerror}") from e
    import yaml

    try:  # JSON is YAML too, but a .json file gets JSON's clearer errors
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        what = str(e)
        mark = getattr(e, "problem_mark", None)
        if isinstance(e, yaml.YAMLError) and mark is not None:  # one line, not YAML's multi-line excerpt
            what = f"{getattr(e, 'problem', None) or 'syntax error'} at line {mark.line + 1}, column {mark.column + 1}"
        raise UsageError(f"sweep spec {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: "
                         f"{' '.join(what.split())}") from e
    if not isinstance(data, dict):
        raise UsageError(f"sweep spec {path} must be a mapping of settings, not {type(data).__name__}")
    return data


def parse_expression(name: str, value: Any) -> Any:
    """A search-space entry: an expression dict (``{"type": "uniform", "low": 0, "high": 1}``, or with
    ``args: [...]``), a list (a choice), or a call such as ``"loguniform(-5, 1)"``."""
    from cluster.sweep import choice, expression_from_dict

    if isinstance(value, list):
        return choice(value)
    if isinstance(value, str):
        try:
            call = ast.parse(value.strip(), mode="eval").body
            if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name) or call.keywords:
                raise ValueError("not a call")
            args = [ast.literal_eval(a) for a in call.args]
        except (SyntaxError, ValueError) as e:
            raise UsageError(f"search space {name!r}: cannot read {value!r} as an expression",
                             hint="write e.g. \"loguniform(-5, 1)\" or \"choice(16, 32)\"") from e
        if call.func.id == "choice":
            return choice(*args)
        value = {"type": call.func.id, "args": args}
    if not isinstance(value, Mapping):
        raise UsageError(f"search space {name!r}: expected an expression, got {value!r}",
                         hint="e.g. {\"type\": \"choice\", \"options\": [1, 2]} or [1, 2]")
    data = dict(value)
    kind = data.get("type")
    if "args" in data:
        names = _POSITIONAL.get(str(kind))
        args = data.pop("args")
        if names is None or not isinstance(args, list):
            raise UsageError(f"search space {name!r}: unknown expression type {kind!r}",
                             hint=f"types: {', '.join(_POSITIONAL)}")
        if kind == "choice":
            return choice(args)
        if len(args) != len(names):
            raise UsageError(f"search space {name!r}: {kind} takes {len(names)} arguments ({', '.join(names)}), "
                             f"got {len(args)}")
        data.update(zip(names, args, strict=True))
    if kind == "choice" and "values" in data:
        data["options"] = data.pop("values")
    return expression_from_dict(data)


def _script_value(name: str, value: Any) -> Any:
    from cluster import layout
    from cluster.datareference import DataReference

    if isinstance(value, Mapping):
        if DataReference.is_reference(dict(value)):
            return DataReference.from_dict(dict(value))
        if len(value) == 1 and next(iter(value)) in ("mount", "download"):
            mode, path = next(iter(value.items()))
            if path is not None and not isinstance(path, str):
                raise UsageError(f"script argument {name!r}: the {mode} path must be a string, got {path!r}",
                                 hint=f'e.g. {{"{mode}": "mnist"}}')
            return DataReference(layout.DEFAULT_DATASTORE, path or "", mode)
        raise UsageError(f"script argument {name!r}: {dict(value)!r} is not a value or a data reference",
                         hint='a data reference is {"mount": "path"} or {"download": "path"}')
    return value


def config_from_spec(data: Mapping[str, Any], base_dir: Path) -> tuple[HyperDriveConfig, str | None, dict[str, str]]:
    """Build the HyperDriveConfig a spec file describes; returns (config, experiment name, tags)."""
    from cluster import validation
    from cluster.estimator import Estimator, ScriptRunConfig
    from cluster.sweep import (
        BayesianParameterSampling,
        GridParameterSampling,
        HyperDriveConfig,
        RandomParameterSampling,
        policy_from_dict,
    )

    validation.check_kwargs("sweep spec", data, known=sorted(TOP_KEYS), noun="key")
    est_data = data.get("estimator") or {}
    if not isinstance(est_data, Mapping):
        raise UsageError("sweep spec: estimator must be a mapping of estimator settings",
                         hint=f"keys: {', '.join(ESTIMATOR_KEYS)}")
    est_data = dict(est_data)
    for key in ESTIMATOR_KEYS:
        if key in data:
            est_data.setdefault(key, data[key])
    validation.check_kwargs("sweep spec estimator", est_data, known=ESTIMATOR_KEYS, noun="key")
    for key in ("source_directory", "entry_script"):
        if not est_data.get(key):
            raise UsageError(f"sweep spec: {key} is required")
    src = Path(str(est_data["source_directory"]))
    if not src.is_absolute():
        src = base_dir / src
    env = {k: est_data[k] for k in ("pip_packages", "conda_packages", "environment_variables") if k in est_data}
    if "script_params" in est_data and "arguments" in est_data:
        raise UsageError("sweep spec: give script_params or arguments, not both")
    if "arguments" in est_data:
        args = est_data["arguments"]
        if not isinstance(args, list):
            raise UsageError("sweep spec: arguments must be a list")
        run: Any = ScriptRunConfig(src, str(est_data["entry_script"]),
                                   arguments=[_script_value(str(i), a) for i, a in enumerate(args)],
                                   compute_target=est_data.get("compute_target"), environment=env,
                                   max_run_duration_seconds=est_data.get("max_run_duration_seconds"))
        kwargs: dict[str, Any] = {"run_config": run}
    else:
        params = est_data.get("script_params") or {}
        if not isinstance(params, Mapping):
            raise UsageError("sweep spec: script_params must be a mapping of argument -> value")
        run = Estimator(src, str(est_data["entry_script"]),
                        script_params={str(k): _script_value(str(k), v) for k, v in params.items()},
                        compute_target=est_data.get("compute_target"), pip_packages=env.get("pip_packages"),
                        conda_packages=env.get("conda_packages"),
                        environment_variables=env.get("environment_variables"),
                        max_run_duration_seconds=est_data.get("max_run_duration_seconds"))
        kwargs = {"estimator": run}

    sampling = data.get("sampling", "random")
    if not isinstance(sampling, str | Mapping | None):
        raise UsageError(f"sweep spec: sampling must be a name or a mapping, got {sampling!r:.60}",
                         hint="e.g. sampling: random, or sampling: {type: random, seed: 7}")
    sampling = {"type": sampling} if isinstance(sampling, str) else dict(sampling or {})
    kind = _SAMPLING_ALIASES.get(str(sampling.pop("type", sampling.pop("kind", "random"))).lower())
    space = sampling.pop("parameters", None) or sampling.pop("space", None) or data.get("search_space") \
        or data.get("parameters")
    if kind is None:
        raise UsageError(f"sweep spec: unknown sampling {data.get('sampling')!r}", hint="grid, random or bayesian")
    if not isinstance(space, Mapping) or not space:
        raise UsageError("sweep spec: search_space must map argument names to expressions",
                         hint='e.g. search_space: {"--regularization": "loguniform(-5, 1)"}')
    exprs = {str(k): parse_expression(str(k), v) for k, v in space.items()}
    classes = {"grid": GridParameterSampling, "random": RandomParameterSampling, "bayesian": BayesianParameterSampling}
    try:
        sampler = classes[kind](exprs, **sampling)
    except TypeError as e:
        raise UsageError(f"sweep spec: bad sampling settings {sorted(sampling)}: {e}") from e

    policy = data.get("policy")
    if policy is not None:
        if not isinstance(policy, str | Mapping):
            raise UsageError(f"sweep spec: policy must be a name or a mapping, got {policy!r:.60}",
                             hint="e.g. policy: {type: bandit, slack_factor: 0.1}")
        policy = {"type": policy} if isinstance(policy, str) else dict(policy)
        ptype = _POLICY_ALIASES.get(str(policy.get("type", "")).lower())
        if ptype is None:
            raise UsageError(f"sweep spec: unknown policy {policy.get('type')!r}",
                             hint="bandit, median_stopping, truncation_selection or none")
        policy = policy_from_dict({**policy, "type": ptype})

    for key in ("primary_metric_name", "primary_metric_goal", "max_total_runs"):
        if key not in data:
            raise UsageError(f"sweep spec: {key} is required")
    tags = data.get("tags") or {}
    if not isinstance(tags, Mapping):
        raise UsageError("sweep spec: tags must be a mapping")
    tags = validation.string_map("sweep spec: tags", tags, keys="tag name")
    config = HyperDriveConfig(
        hyperparameter_sampling=sampler, primary_metric_name=data["primary_metric_name"],
        primary_metric_goal=data["primary_metric_goal"], max_total_runs=data["max_total_runs"],
        max_concurrent_runs=data.get("max_concurrent_runs"),
        max_duration_minutes=data.get("max_duration_minutes", 10080), policy=policy,
        goal_threshold=data.get("goal_threshold"), **kwargs)
    return config, data.get("experiment"), {str(k): str(v) for k, v in tags.items()}


# ---- plot ---------------------------------------------------------------------------------------

_COLORS = {"Completed": "tab:blue", "Canceled": "tab:orange", "Failed": "tab:red"}


def write_plot(summary: Mapping[str, Any], path: Path) -> Path:
    """A PNG with one panel per hyperparameter: the primary metric of every child that reported it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise UsageError("plotting needs matplotlib", hint="pip install 'cluster[plots]', or pass --no-plot") from e

    rows = list(summary.get("children", []))
    metric = summary.get("primary_metric", {}).get("name", "metric")
    space = summary.get("sampling", {}).get("space", {})
    names = list(space) or sorted({n for r in rows for n in r.get("hyperparameters", {})}) or ["(none)"]
    fig = Figure(figsize=(max(4.5 * len(names), 6.0), 4.2), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    best_id = (summary.get("best") or {}).get("run_id")
    for ax, name in zip(axes, names, strict=True):
        points = [(r["hyperparameters"].get(name), r["best_primary_metric"], r) for r in rows
                  if r.get("best_primary_metric") is not None and name in r.get("hyperparameters", {})]
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x, _y, _r in points)
        if numeric:
            xs: list[Any] = [float(x) for x, _y, _r in points]
            if space.get(name, {}).get("type") in ("loguniform", "qloguniform") and xs and min(xs) > 0:
                ax.set_xscale("log")
        else:
            cats = sorted({json.dumps(x) for x, _y, _r in points})
            xs = [cats.index(json.dumps(x)) for x, _y, _r in points]
            ax.set_xticks(range(len(cats)), labels=[c.strip('"') for c in cats])
        labeled = False
        for status, color in _COLORS.items():
            sel = [(x, p[1]) for x, p in zip(xs, points, strict=True) if p[2]["status"] == status]
            if sel:
                ax.scatter([s[0] for s in sel], [s[1] for s in sel], c=color, label=status, s=36, alpha=0.85)
                labeled = True
        best = [(x, p[1]) for x, p in zip(xs, points, strict=True) if p[2]["run_id"] == best_id]
        if best:
            ax.scatter([best[0][0]], [best[0][1]], marker="*", s=220, c="gold", edgecolors="black", label="best",
                       zorder=3)
        if not points:
            ax.text(0.5, 0.5, f"no child reported {metric!r} yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        if labeled:
            ax.legend(fontsize="small")
    goal = summary.get("primary_metric", {}).get("goal")
    fig.suptitle(f"sweep {summary.get('parent_id', '')}\n{metric} ({goal}) against each hyperparameter",
                 fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    return path


# ---- commands -----------------------------------------------------------------------------------

def _ws() -> Workspace:
    from cluster.workspace import Workspace

    return Workspace.from_config()


def _sweep(ws: Workspace, sweep_id: str) -> HyperDriveRun:
    from cluster.sweep import HyperDriveRun

    return HyperDriveRun.from_id(ws, sweep_id)


def cmd_submit(args: argparse.Namespace) -> int:
    from cluster.experiment import Experiment

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
        print(f"primary metric: {spec.primary_metric_name} ({spec.goal.value}); {spec.sampling['type']} sampling; "
              f"policy {spec.policy.get('type')}; {len(live)} of max {spec.max_total_runs} children"
              + (f" ({counts})" if counts else ""))
        print()
        print(format_table(live, spec.primary_metric_name))
    if not args.no_plot:
        path = write_plot(summary, args.plot or Path(f"{run.id}.png"))
        print(f"plot: {path}", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from cluster import validation
    from cluster.experiment import _run_sort_key
    from cluster.sweep import state

    validation.whole_number("--limit", args.limit, minimum=1)
    ws = _ws()
    ids = [info.key.rsplit("/", 1)[-1] for info in ws.store.list(state.ALL_SWEEPS)]
    ids.sort(key=_run_sort_key, reverse=True)
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
