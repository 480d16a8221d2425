"""HyperDriveConfig: validation before anything is submitted, and the stored spec's round trip (no servers)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from cluster import Estimator, ScriptRunConfig
from cluster.errors import PayloadError, UsageError
from cluster.estimator import RunConfiguration
from cluster.sweep import (
    BanditPolicy,
    BayesianParameterSampling,
    GridParameterSampling,
    HyperDriveConfig,
    MedianStoppingPolicy,
    NoTerminationPolicy,
    PrimaryMetricGoal,
    RandomParameterSampling,
    TruncationSelectionPolicy,
    choice,
    loguniform,
    normal,
    quniform,
    uniform,
)
from cluster.sweep.config import SweepSpec, argument_name
from cluster.sweep.driver import child_arguments
from cluster.sweep.plot import write_plot
from cluster.sweep.spec import config_from_spec, parse_expression, read_spec_file


@pytest.fixture
def est(train_dir: Path) -> Estimator:
    return Estimator(train_dir, "train.py", script_params={"--data-folder": "/data", "--epochs": 3},
                     compute_target="cpu")


def make(est: Any = None, **kw: Any) -> HyperDriveConfig:
    args: dict[str, Any] = {
        "hyperparameter_sampling": RandomParameterSampling({"--regularization": loguniform(-5, 1)}, seed=7),
        "primary_metric_name": "accuracy", "primary_metric_goal": PrimaryMetricGoal.MAXIMIZE,
        "max_total_runs": 16, "max_concurrent_runs": 4, **kw,
    }
    if est is not None:
        args["estimator"] = est
    return HyperDriveConfig(**args)


# ---- validation ---------------------------------------------------------------------------------

def test_the_tutorial_config_is_valid(est: Estimator) -> None:
    hd = make(est, policy=BanditPolicy(evaluation_interval=1, slack_factor=0.1))
    assert hd.max_total_runs == 16 and hd.max_concurrent_runs == 4
    assert hd.primary_metric_goal is PrimaryMetricGoal.MAXIMIZE
    assert "random" in repr(hd) and "--regularization" in repr(hd)


def test_script_run_config_is_accepted(train_dir: Path) -> None:
    rc = ScriptRunConfig(train_dir, "train.py", arguments=["--x", 1], compute_target="cpu")
    hd = make(run_config=rc, primary_metric_goal="minimize")
    spec = hd.spec()
    assert spec.run_config.arguments == ("--x", 1) and spec.run_config.pool == "cpu"
    assert spec.primary_metric_goal is PrimaryMetricGoal.MINIMIZE
    stored = spec.to_dict()
    assert stored["run_config"]["arguments"] == ["--x", 1] and stored["primary_metric_goal"] == "minimize"


@pytest.mark.parametrize(("kw", "match"), [
    ({"max_total_runs": 0}, "max_total_runs"),
    ({"max_total_runs": True}, "max_total_runs"),
    ({"max_total_runs": 2.5}, "max_total_runs"),
    ({"max_total_runs": 1001}, "at most 1000"),
    ({"max_concurrent_runs": 0}, "max_concurrent_runs"),
    ({"max_duration_minutes": 0}, "max_duration_minutes"),
    ({"max_duration_minutes": math.inf}, "max_duration_minutes"),
    ({"primary_metric_name": ""}, "primary_metric_name"),
    ({"primary_metric_name": None}, "primary_metric_name"),
    ({"primary_metric_goal": "bigger"}, "maximize"),
    ({"policy": "bandit"}, "policy"),
    ({"goal_threshold": math.nan}, "goal_threshold"),
    ({"goal_threshold": "0.9"}, "goal_threshold"),
    ({"hyperparameter_sampling": {"--lr": uniform(0, 1)}}, "hyperparameter_sampling"),
    ({"resume_from": "run-1"}, "unsupported"),
])
def test_bad_arguments_are_usage_errors(est: Estimator, kw: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        make(est, **kw)


def test_exactly_one_run_to_sweep(est: Estimator, train_dir: Path) -> None:
    with pytest.raises(UsageError, match="exactly one of estimator"):
        make(None)
    with pytest.raises(UsageError, match="exactly one of estimator"):
        make(est, run_config=ScriptRunConfig(train_dir, "train.py"))
    with pytest.raises(UsageError, match="Estimator or a ScriptRunConfig"):
        make(run_config="train.py")


def test_grid_accepts_only_choice() -> None:
    with pytest.raises(UsageError, match="grid sampling supports only choice"):
        GridParameterSampling({"--lr": uniform(0, 1)})


def test_hyperparameter_may_not_also_be_a_fixed_argument(train_dir: Path) -> None:
    est = Estimator(train_dir, "train.py", script_params={"--regularization": 0.5})
    with pytest.raises(UsageError, match="both a fixed script argument and a hyperparameter"):
        make(est)
    rc = ScriptRunConfig(train_dir, "train.py", arguments=["--lr", "0.1"])
    with pytest.raises(UsageError, match="--lr"):
        make(run_config=rc, hyperparameter_sampling=RandomParameterSampling({"lr": uniform(0, 1)}))


def test_two_names_for_one_flag(est: Estimator) -> None:
    sampling = RandomParameterSampling({"lr": uniform(0, 1), "--lr": uniform(0, 1)})
    with pytest.raises(UsageError, match="same argument twice"):
        make(est, hyperparameter_sampling=sampling)


def test_bad_pool_name(train_dir: Path) -> None:
    with pytest.raises(UsageError, match="pool"):
        make(Estimator(train_dir, "train.py", compute_target="no/slashes"))


def test_concurrency_defaults_to_and_is_capped_by_total(est: Estimator) -> None:
    assert make(est, max_concurrent_runs=None, max_total_runs=5).max_concurrent_runs == 5
    assert make(est, max_concurrent_runs=50, max_total_runs=5).max_concurrent_runs == 5
    assert isinstance(make(est).policy, NoTerminationPolicy)


def test_argument_names_and_child_arguments() -> None:
    assert argument_name("--lr") == "--lr" and argument_name("-b") == "-b" and argument_name("lr") == "--lr"
    args = child_arguments(["--data-folder", "/d"], {"--regularization": 0.25, "batch": 32, "--opt": "adam"})
    assert args == ["--data-folder", "/d", "--regularization", 0.25, "--batch", 32, "--opt", "adam"]


# ---- the stored spec ----------------------------------------------------------------------------

@pytest.mark.parametrize("sampling", [
    RandomParameterSampling({"--regularization": loguniform(-5, 1), "--batch": choice(16, 32)}, seed=7),
    GridParameterSampling({"--a": choice(1, 2), "--b": choice("x", "y", "z")}),
    BayesianParameterSampling({"--lr": uniform(0.01, 0.1), "--n": quniform(1, 10, 1), "--m": normal(0, 1)},
                              seed=3, n_startup_trials=4),
])
@pytest.mark.parametrize("policy", [
    None, BanditPolicy(evaluation_interval=2, slack_amount=0.05, delay_evaluation=3),
    MedianStoppingPolicy(evaluation_interval=1, delay_evaluation=5),
    TruncationSelectionPolicy(truncation_percentage=20),
])
def test_spec_round_trips_through_json(est: Estimator, sampling: Any, policy: Any) -> None:
    hd = make(est, hyperparameter_sampling=sampling, policy=policy, goal_threshold=0.97, max_duration_minutes=30)
    spec = hd.spec(snapshot="ab" * 32, experiment="exp", parent_id="exp_1_abcd", created=1000.0)
    back = SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    assert back.sampling == sampling
    assert back.policy == (policy or NoTerminationPolicy())
    assert back.goal is PrimaryMetricGoal.MAXIMIZE and back.goal_threshold == 0.97
    assert back.deadline == 1000.0 + 30 * 60
    rc = back.run_config
    assert rc == est.run_config()
    # the rebuilt sampler continues the same sequence
    assert back.sampling.next_samples([], 3, "maximize") == sampling.next_samples([], 3, "maximize")


def test_random_seed_none_is_fixed_at_construction(est: Estimator) -> None:
    hd = make(est, hyperparameter_sampling=RandomParameterSampling({"--x": uniform(0, 1)}))
    spec = SweepSpec.from_dict(json.loads(json.dumps(hd.spec().to_dict())))
    assert spec.sampling.next_samples([], 4) == hd.hyperparameter_sampling.next_samples([], 4)


def test_run_config_dict_round_trip(est: Estimator) -> None:
    rc = est.run_config()
    assert RunConfiguration.from_dict(json.loads(json.dumps(rc.to_dict()))) == rc


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda d: d.update(version=99), "version"),
    (lambda d: d.update(max_concurrent_runs=0), "sweep spec: max_concurrent_runs must be at least 1, got 0"),
    (lambda d: d.update(max_total_runs="16"), "sweep spec: max_total_runs must be a whole number"),
    (lambda d: d["run_config"].update(pip_packages="numpy"), "got the string 'numpy'"),
    (lambda d: d["sampling"]["space"].update({"--c": {"type": "choice", "option": [1]}}),
     "parameter '--c': choice parameter expression: options is required; option is not a known field"),
    (lambda d: d.update(sampling={"type": "grid", "space": {"--a": {"type": "uniform", "low": 0, "high": 1}}}),
     "grid sampling supports only choice"),
    (lambda d: d.update(policy={"type": "nope"}), "policy"),
    (lambda d: d.update(primary_metric_goal="sideways"), "maximize"),
    (lambda d: d.pop("run_config"), "sweep spec: run_config is required"),
])
def test_bad_stored_specs_are_payload_errors(est: Estimator, mutate: Any, match: str) -> None:
    data = make(est).spec().to_dict()
    mutate(data)
    with pytest.raises(PayloadError, match=match):
        SweepSpec.from_dict(data)
    with pytest.raises(PayloadError):
        SweepSpec.from_dict(["not", "a", "dict"])


def test_stored_spec_ignores_unknown_keys(est: Estimator) -> None:
    """A newer writer's extra key does not break this reader (the schema's rule for every stored record)."""
    spec = make(est).spec()
    assert SweepSpec.from_dict({**spec.to_dict(), "written_by_a_newer_version": 1}) == spec


def test_stored_spec_keeps_its_json_shape(est: Estimator) -> None:
    """sweep.json on existing clusters: the same keys and type tags as before the typed records."""
    data = make(est, policy=BanditPolicy(slack_factor=0.1)).spec(created=5.0).to_dict()
    assert sorted(data) == ["created", "experiment", "extra", "goal_threshold", "max_concurrent_runs",
                            "max_duration_minutes", "max_total_runs", "parent_id", "policy", "primary_metric_goal",
                            "primary_metric_name", "run_config", "sampling", "snapshot", "version"]
    assert data["primary_metric_goal"] == "maximize" and data["version"] == 1
    assert sorted(data["sampling"]) == ["seed", "space", "type"] and data["sampling"]["type"] == "random"
    assert data["policy"] == {"type": "bandit", "evaluation_interval": 1, "delay_evaluation": 0,
                              "slack_factor": 0.1, "slack_amount": None}
    assert sorted(data["run_config"]) == ["arguments", "conda_packages", "entry_script", "environment_variables",
                                          "max_run_duration_seconds", "pip_packages", "pool", "source_directory"]
    assert isinstance(data["run_config"]["source_directory"], str)
    assert make(est).spec().to_dict()["policy"] == {"type": "no_termination"}



# ---- the CLI's spec file ------------------------------------------------------------------------

def test_spec_file_yaml(train_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"""
experiment: demo
source_directory: {train_dir.name}
entry_script: train.py
script_params: {{"--data-folder": {{"mount": "mnist"}}, "--train-limit": 200}}
compute_target: cpucluster
search_space:
  "--regularization": {{"type": "loguniform", "min_exp": -5, "max_exp": 1}}
  "--solver": ["lbfgs", "saga"]
  "--tol": "quniform(0.001, 0.01, 0.001)"
sampling: {{type: random, seed: 7}}
policy: {{type: bandit, slack_factor: 0.1, evaluation_interval: 1}}
primary_metric_name: accuracy
primary_metric_goal: maximize
max_total_runs: 16
max_concurrent_runs: 4
goal_threshold: 0.99
tags: {{team: ml}}
""")
    hd, experiment, tags = config_from_spec(read_spec_file(path), path.parent)
    assert experiment == "demo" and tags == {"team": "ml"}
    assert hd.hyperparameter_sampling == RandomParameterSampling(
        {"--regularization": loguniform(-5, 1), "--solver": choice("lbfgs", "saga"),
         "--tol": quniform(0.001, 0.01, 0.001)}, seed=7)
    assert hd.policy == BanditPolicy(evaluation_interval=1, slack_factor=0.1)
    spec = hd.spec()
    assert spec.run_config.pool == "cpucluster"
    assert list(spec.run_config.arguments[:2]) == ["--data-folder", {
        "kind": "data_reference", "datastore": "workspaceblobstore", "path_on_datastore": "mnist", "mode": "mount",
        "path_on_compute": None}]
    assert spec.max_total_runs == 16 and spec.max_concurrent_runs == 4 and spec.goal_threshold == 0.99


def test_spec_file_json_grid_with_arguments(train_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({
        "estimator": {"source_directory": str(train_dir), "entry_script": "train.py", "arguments": ["--fixed", 1]},
        "sampling": "grid", "parameters": {"--a": {"type": "choice", "values": [1, 2]}, "--b": "choice(3, 4)"},
        "primary_metric_name": "loss", "primary_metric_goal": "minimize", "max_total_runs": 4,
        "policy": "none"}))
    hd, experiment, _tags = config_from_spec(read_spec_file(path), path.parent)
    assert experiment is None
    assert hd.hyperparameter_sampling == GridParameterSampling({"--a": choice(1, 2), "--b": choice(3, 4)})
    assert isinstance(hd.policy, NoTerminationPolicy)
    assert hd.spec().run_config.arguments == ("--fixed", 1)


@pytest.mark.parametrize(("patch", "match"), [
    ({"sampling": "grid"}, "grid sampling supports only choice"),
    ({"colour": "red"}, "unknown key"),
    ({"policy": {"type": "psychic"}}, "unknown policy"),
    ({"search_space": {"--x": "exp(3)"}}, "unknown expression|unknown parameter expression"),
    ({"search_space": {"--x": "uniform(1)"}}, "takes 2 arguments"),
    ({"search_space": {"--x": 3}}, "expected an expression"),
    ({"primary_metric_name": None}, "primary_metric_name"),
])
def test_spec_file_errors(train_dir: Path, patch: dict[str, Any], match: str) -> None:
    data: dict[str, Any] = {"source_directory": str(train_dir), "entry_script": "train.py",
                            "search_space": {"--x": "uniform(0, 1)"}, "primary_metric_name": "m",
                            "primary_metric_goal": "maximize", "max_total_runs": 2, **patch}
    with pytest.raises(UsageError, match=match):
        config_from_spec(data, train_dir)


def test_spec_file_unreadable(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UsageError, match="not valid YAML"):
        read_spec_file(bad)
    with pytest.raises(UsageError, match="cannot read"):
        read_spec_file(tmp_path / "missing.yaml")
    lst = tmp_path / "list.json"
    lst.write_text("[1, 2]")
    with pytest.raises(UsageError, match="mapping"):
        read_spec_file(lst)


def test_parse_expression_forms() -> None:
    assert parse_expression("x", "loguniform(-5, 1)") == loguniform(-5, 1)
    assert parse_expression("x", {"type": "uniform", "args": [0, 2]}) == uniform(0, 2)
    assert parse_expression("x", [16, 32]) == choice(16, 32)
    assert parse_expression("x", "choice('a', 'b')") == choice("a", "b")
    with pytest.raises(UsageError):
        parse_expression("x", "__import__('os')")


def test_plot_is_written_without_warnings(tmp_path: Path) -> None:
    summary = {
        "parent_id": "exp_1_abc", "primary_metric": {"name": "accuracy", "goal": "maximize"},
        "sampling": {"type": "random", "space": {"--regularization": {"type": "loguniform", "min_exp": -5,
                                                                       "max_exp": 1},
                                                  "--solver": {"type": "choice", "options": ["a", "b"]}}},
        "best": {"run_id": "c1"},
        "children": [
            {"run_id": "c1", "hyperparameters": {"--regularization": 0.1, "--solver": "a"},
             "best_primary_metric": 0.9, "status": "Completed"},
            {"run_id": "c2", "hyperparameters": {"--regularization": 1.5, "--solver": "b"},
             "best_primary_metric": 0.5, "status": "Canceled"},
            {"run_id": "c3", "hyperparameters": {"--regularization": 0.01, "--solver": "b"},
             "best_primary_metric": None, "status": "Failed"},
        ],
    }
    out = write_plot(summary, tmp_path / "plot.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = write_plot({**summary, "children": [], "best": None}, tmp_path / "empty.png")
    assert empty.stat().st_size > 0
