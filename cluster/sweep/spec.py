"""A sweep spec file (YAML or JSON) read into a :class:`~cluster.sweep.HyperDriveConfig` (``cluster sweep submit``).

Its format is shown by ``cluster sweep submit --help`` (``cluster.cli.sweep.SPEC_FORMAT``): estimator fields,
a search space, sampling, policy, the primary metric and the limits; paths are relative to the file.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cluster import layout, validation
from cluster.datareference import DataReference
from cluster.errors import UsageError
from cluster.estimator import Estimator, ScriptRunConfig
from cluster.sweep.config import HyperDriveConfig
from cluster.sweep.expressions import EXPRESSIONS, choice, expression_from_dict
from cluster.sweep.policy import policy_from_dict
from cluster.sweep.sampling import SAMPLINGS

ESTIMATOR_KEYS = ("source_directory", "entry_script", "script_params", "arguments", "compute_target", "pip_packages",
                  "conda_packages", "environment_variables", "max_run_duration_seconds")
TOP_KEYS = {"experiment", "estimator", "search_space", "parameters", "sampling", "policy", "primary_metric_name",
            "primary_metric_goal", "max_total_runs", "max_concurrent_runs", "max_duration_minutes", "goal_threshold",
            "tags", *ESTIMATOR_KEYS}
_SAMPLING_ALIASES = {"grid": "grid", "random": "random", "bayesian": "bayesian", "tpe": "bayesian"}
_POLICY_ALIASES = {"bandit": "bandit", "median": "median_stopping", "median_stopping": "median_stopping",
                   "truncation": "truncation_selection", "truncation_selection": "truncation_selection",
                   "none": "no_termination", "no_termination": "no_termination"}


def _positional(kind: str) -> tuple[str, ...] | None:
    """The argument names of an expression, in order (``uniform`` -> ``("low", "high")``); None if unknown."""
    if kind not in EXPRESSIONS:
        return None
    return tuple(f.name for f in dataclasses.fields(EXPRESSIONS[kind]))  # type: ignore[arg-type]


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
        names = _positional(str(kind))
        args = data.pop("args")
        if names is None or not isinstance(args, list):
            raise UsageError(f"search space {name!r}: unknown expression type {kind!r}",
                             hint=f"types: {', '.join(EXPRESSIONS.names)}")
        if kind == "choice":
            return choice(args)
        if len(args) != len(names):
            raise UsageError(f"search space {name!r}: {kind} takes {len(names)} arguments ({', '.join(names)}), "
                             f"got {len(args)}")
        data.update(zip(names, args, strict=True))
    if kind == "choice" and "values" in data:
        data["options"] = data.pop("values")
    try:
        return expression_from_dict(data)
    except UsageError as e:
        raise UsageError(f"search space {name!r}: {e.message}", hint=e.hint) from None


def _script_value(name: str, value: Any) -> Any:
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
    try:
        sampler = SAMPLINGS[kind](exprs, **sampling)  # type: ignore[call-arg]
    except UsageError as e:
        raise UsageError(f"sweep spec: {e.message}", hint=e.hint) from None

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
