"""The sweep's typed records (cluster/schema.py): one registry per family, hand-written dicts checked key by key,
every kind round-trips, and the stored JSON keeps the shape older clusters wrote."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from cluster.errors import PayloadError, UsageError
from cluster.estimator import RunConfiguration
from cluster.sweep import (
    BanditPolicy,
    BayesianParameterSampling,
    Choice,
    EarlyTerminationPolicy,
    GridParameterSampling,
    MedianStoppingPolicy,
    NoTerminationPolicy,
    ParameterExpression,
    ParameterSampling,
    PrimaryMetricGoal,
    RandomParameterSampling,
    Trial,
    TruncationSelectionPolicy,
    choice,
    expression_from_dict,
    loguniform,
    normal,
    policy_from_dict,
    qloguniform,
    qnormal,
    quniform,
    randint,
    sampling_from_dict,
    uniform,
)
from cluster.sweep.config import SweepSpec
from cluster.sweep.expressions import EXPRESSIONS
from cluster.sweep.policy import POLICIES
from cluster.sweep.sampling import SAMPLINGS

EXPRESSION_FORMS: list[tuple[ParameterExpression, dict[str, Any]]] = [
    (choice(1, "a", [2, 3], None), {"type": "choice", "options": [1, "a", [2, 3], None]}),
    (randint(5), {"type": "randint", "upper": 5}),
    (uniform(0, 1), {"type": "uniform", "low": 0.0, "high": 1.0}),
    (quniform(0, 10, 2), {"type": "quniform", "low": 0.0, "high": 10.0, "q": 2}),
    (loguniform(-5, 0), {"type": "loguniform", "min_exp": -5.0, "max_exp": 0.0}),
    (qloguniform(0, 3, 0.5), {"type": "qloguniform", "min_exp": 0.0, "max_exp": 3.0, "q": 0.5}),
    (normal(0, 1), {"type": "normal", "mu": 0.0, "sigma": 1.0}),
    (qnormal(1, 2, 1), {"type": "qnormal", "mu": 1.0, "sigma": 2.0, "q": 1}),
]
SPACE = {"--u": uniform(0, 1), "--c": choice(1, 2)}
SPACE_JSON = {"--u": {"type": "uniform", "low": 0.0, "high": 1.0}, "--c": {"type": "choice", "options": [1, 2]}}
SAMPLING_FORMS: list[tuple[ParameterSampling, dict[str, Any]]] = [
    (GridParameterSampling({"--c": choice(1, 2)}), {"type": "grid", "space": {"--c": SPACE_JSON["--c"]}}),
    (RandomParameterSampling(SPACE, seed=5), {"type": "random", "space": SPACE_JSON, "seed": 5}),
    (BayesianParameterSampling(SPACE, seed=11, n_startup_trials=3),
     {"type": "bayesian", "space": SPACE_JSON, "seed": 11, "n_startup_trials": 3}),
]
POLICY_FORMS: list[tuple[EarlyTerminationPolicy, dict[str, Any]]] = [
    (NoTerminationPolicy(), {"type": "no_termination"}),
    (BanditPolicy(evaluation_interval=2, slack_factor=0.1, delay_evaluation=1),
     {"type": "bandit", "evaluation_interval": 2, "slack_factor": 0.1, "slack_amount": None, "delay_evaluation": 1}),
    (MedianStoppingPolicy(2, 3), {"type": "median_stopping", "evaluation_interval": 2, "delay_evaluation": 3}),
    (TruncationSelectionPolicy(20),
     {"type": "truncation_selection", "truncation_percentage": 20, "evaluation_interval": 1, "delay_evaluation": 0}),
]


# ---- one registry per family, every kind covered ----------------------------------------------------------

def test_every_registered_kind_is_covered_here() -> None:
    """A new kind must come with its JSON form in this file (so its stored shape is pinned)."""
    assert {obj.kind for obj, _ in EXPRESSION_FORMS} == set(EXPRESSIONS.names)
    assert {obj.kind for obj, _ in SAMPLING_FORMS} == set(SAMPLINGS.names)
    assert {obj.kind for obj, _ in POLICY_FORMS} == set(POLICIES.names)


@pytest.mark.parametrize(("obj", "form"), [*EXPRESSION_FORMS, *SAMPLING_FORMS, *POLICY_FORMS],
                         ids=lambda x: getattr(x, "kind", ""))
def test_every_kind_has_its_json_form_and_round_trips(obj: Any, form: dict[str, Any]) -> None:
    data = obj.to_dict()
    assert data == form  # the shape stored sweeps were written in: type tag, field names, ints stay ints
    assert json.dumps(data, sort_keys=True) == json.dumps(form, sort_keys=True)
    load = (expression_from_dict if isinstance(obj, ParameterExpression) else
            sampling_from_dict if isinstance(obj, ParameterSampling) else policy_from_dict)
    restored = load(json.loads(json.dumps(data)))
    assert restored == obj and type(restored) is type(obj)
    assert type(obj).from_dict(data) == obj


def test_quantized_steps_keep_their_type() -> None:
    assert isinstance(quniform(0, 10, 2).q, int) and isinstance(expression_from_dict({
        "type": "quniform", "low": 0, "high": 10, "q": 2}).q, int)  # type: ignore[attr-defined]
    assert isinstance(qnormal(0, 1, 0.5).q, float)
    # numpy scalars are numbers (an np.int64 step stays an int, so values reach the script as ints)
    expr = quniform(np.int64(0), np.float64(1.5), np.int64(2))  # type: ignore[arg-type]
    assert expr == quniform(0, 1.5, 2) and type(expr.q) is int
    assert type(randint(np.int32(4)).upper) is int  # type: ignore[arg-type]


@pytest.mark.parametrize(("family", "data", "known"), [
    ("parameter expression", {"type": "gaussian", "mu": 0}, "choice, randint, uniform, quniform"),
    ("parameter sampling", {"type": "sobol", "space": {}}, "grid, random, bayesian"),
    ("early termination policy", {"type": "hyperband"}, "no_termination, bandit, median_stopping"),
])
def test_an_unknown_tag_is_refused_with_the_known_ones(family: str, data: dict[str, Any], known: str) -> None:
    load = {"parameter expression": expression_from_dict, "parameter sampling": sampling_from_dict,
            "early termination policy": policy_from_dict}[family]
    with pytest.raises(UsageError, match=f"unknown {family} type '{data['type']}'") as info:
        load(data)
    assert info.value.hint is not None and known in info.value.hint


@pytest.mark.parametrize(("load", "data", "message", "hint"), [
    (expression_from_dict, {"type": "uniform", "low": 0, "hihg": 1},
     "uniform parameter expression: high is required; hihg is not a known field", "did you mean 'high'"),
    (expression_from_dict, {"type": "quniform", "low": 0, "high": 1, "q": 0.1, "step": 1},
     "quniform parameter expression: step is not a known field", "known fields: low, high, q"),
    (sampling_from_dict, {"type": "random", "space": SPACE_JSON, "sede": 3},
     "random parameter sampling: sede is not a known field", "did you mean 'seed'"),
    (sampling_from_dict, {"type": "bayesian", "space": SPACE_JSON, "n_startup_trial": 3},
     "bayesian parameter sampling: n_startup_trial is not a known field", "did you mean 'n_startup_trials'"),
    (policy_from_dict, {"type": "bandit", "slack_facter": 0.1},
     "bandit early termination policy: slack_facter is not a known field", "did you mean 'slack_factor'"),
    (policy_from_dict, {"type": "no_termination", "evaluation_interval": 2},
     "no_termination early termination policy: evaluation_interval is not a known field", "it takes no fields"),
])
def test_a_misspelt_key_is_refused_with_a_did_you_mean(load: Any, data: dict[str, Any], message: str,
                                                       hint: str) -> None:
    with pytest.raises(UsageError) as info:
        load(data)
    assert info.value.message == message
    assert info.value.hint is not None and hint in info.value.hint


def test_a_bad_entry_of_a_space_is_named() -> None:
    with pytest.raises(UsageError) as info:
        RandomParameterSampling({"--lr": 0.1}, seed=1)  # type: ignore[dict-item]
    assert info.value.message == ("parameter '--lr': a parameter expression must be a ParameterExpression or a "
                                  "mapping with a 'type', got 0.1")
    with pytest.raises(UsageError) as info:
        sampling_from_dict({"type": "random", "seed": 1,
                            "space": {"--a": SPACE_JSON["--u"], "--b": {"type": "uniform", "low": 2, "high": 1}}})
    assert info.value.message == "parameter '--b': uniform(): low must be < high, got low=2.0, high=1.0"


def test_a_space_takes_expressions_or_their_dicts() -> None:
    assert RandomParameterSampling(SPACE_JSON, seed=3) == RandomParameterSampling(SPACE, seed=3)  # type: ignore[arg-type]
    mixed = {"--u": SPACE_JSON["--u"], "--c": choice(1, 2)}
    assert GridParameterSampling({"--c": SPACE_JSON["--c"]}) == GridParameterSampling({"--c": choice(1, 2)})  # type: ignore[dict-item]
    assert BayesianParameterSampling(mixed, seed=3).space == SPACE  # type: ignore[arg-type]


def test_seed_none_picks_one_that_is_stored() -> None:
    sampling = RandomParameterSampling(SPACE)
    assert isinstance(sampling.seed, int) and sampling.seed >= 0
    assert sampling_from_dict(sampling.to_dict()) == sampling
    assert RandomParameterSampling(SPACE, seed=np.int64(7)).seed == 7  # type: ignore[arg-type]
    for bad, message in ((-1, "seed must be at least 0, got -1"), (True, "seed must be a whole number"),
                         ("7", "seed must be a whole number"), (1.5, "seed must be a whole number")):
        with pytest.raises(UsageError, match=f"^random sampling: {message}"):
            RandomParameterSampling(SPACE, seed=bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"^bayesian sampling: n_startup_trials must be at least 0, got -1$"):
        BayesianParameterSampling(SPACE, n_startup_trials=-1)


@pytest.mark.parametrize(("build", "message", "hint"), [
    (lambda: randint(True), r"randint\(\): upper must be a whole number, got True \(bool\)", "0..upper-1"),
    (lambda: uniform(True, 2), r"uniform\(\): low must be a number, got True \(bool\)", None),
    (lambda: uniform("0", 1),  # type: ignore[arg-type]
     r"uniform\(\): low must be a number, got '0' \(str\) \(write 0 without quotes\)", None),
    (lambda: normal(0, -1), r"normal\(\): sigma must be greater than 0, got -1", "standard deviation"),
    (lambda: quniform(0, 1, math.nan), r"quniform\(\): q must be a finite number, got nan", "spacing"),
    (lambda: quniform(0, 1, "2"), r"quniform\(\): q must be a number, got '2' \(str\)",  # type: ignore[arg-type]
     "spacing"),
    (lambda: TruncationSelectionPolicy(100), "truncation_percentage must be at most 99, got 100", "worst 20%"),
    (lambda: BanditPolicy(slack_factor=0.1, evaluation_interval=0), "evaluation_interval must be at least 1, got 0",
     "every logged value"),
    (lambda: Choice({1, 2}), r"choice\(\): options must be a list, got \{1, 2\} \(set\)",  # type: ignore[arg-type]
     None),
])
def test_field_types_refuse_with_the_field_named_and_its_hint(build: Any, message: str, hint: str | None) -> None:
    with pytest.raises(UsageError, match=message) as info:
        build()
    if hint is not None:
        assert info.value.hint is not None and hint in info.value.hint


def test_trial_values() -> None:
    assert Trial({"a": 1}, np.float64(0.5)).value == 0.5
    value = Trial({"a": 1}, math.nan).value  # a NaN metric is a value here (the sampler treats it as unfinished)
    assert value is not None and math.isnan(value)
    assert Trial({"a": 1}).value is None
    with pytest.raises(UsageError, match=r"^Trial: value must be a number, got 'high'"):
        Trial({"a": 1}, "high")  # type: ignore[arg-type]


# ---- stored sweep specs written before the typed records ----------------------------------------------------

#: sweep.json as the hand-written converters wrote it (generated with the code before this change)
OLD_SPECS = [
    {"created": 1000.0, "experiment": "exp", "extra": {}, "goal_threshold": 0.5, "max_concurrent_runs": 2,
     "max_duration_minutes": 30.0, "max_total_runs": 6, "parent_id": "exp_1_abcd",
     "policy": {"delay_evaluation": 1, "evaluation_interval": 2, "slack_amount": None, "slack_factor": 0.1,
                "type": "bandit"},
     "primary_metric_goal": "minimize", "primary_metric_name": "acc",
     "run_config": {"arguments": ["--data", "x", "--n", 3], "conda_packages": [], "entry_script": "train.py",
                    "environment_variables": {"A": "1"}, "max_run_duration_seconds": 600.0,
                    "pip_packages": ["numpy"], "pool": "cpu", "source_directory": "/tmp/sweepgen/src"},
     "sampling": {"n_startup_trials": 3, "seed": 11, "space": {
         "--c": {"options": [1, "a", [2, 3]], "type": "choice"},
         "--lu": {"max_exp": 0.0, "min_exp": -5.0, "type": "loguniform"},
         "--qlu": {"max_exp": 3.0, "min_exp": 0.0, "q": 0.5, "type": "qloguniform"},
         "--qn": {"mu": 1.0, "q": 1, "sigma": 2.0, "type": "qnormal"},
         "--qu": {"high": 10.0, "low": 0.0, "q": 2, "type": "quniform"},
         "--r": {"type": "randint", "upper": 5}, "--u": {"high": 1.0, "low": 0.0, "type": "uniform"}},
         "type": "bayesian"},
     "snapshot": "ab" * 32, "version": 1},
    {"created": 1000.0, "experiment": "exp", "extra": {}, "goal_threshold": None, "max_concurrent_runs": 2,
     "max_duration_minutes": 30.0, "max_total_runs": 6, "parent_id": "exp_1_abcd",
     "policy": {"type": "no_termination"}, "primary_metric_goal": "maximize", "primary_metric_name": "acc",
     "run_config": {"arguments": [], "conda_packages": [], "entry_script": "train.py", "environment_variables": {},
                    "max_run_duration_seconds": None, "pip_packages": [], "pool": "default",
                    "source_directory": "/tmp/sweepgen/src"},
     "sampling": {"space": {"--c": {"options": [1, 2], "type": "choice"}}, "type": "grid"},
     "snapshot": "ab" * 32, "version": 1},
]


@pytest.mark.parametrize("stored", OLD_SPECS, ids=["bayesian-bandit", "grid-none"])
def test_specs_stored_before_still_load_and_are_written_back_the_same(stored: dict[str, Any]) -> None:
    spec = SweepSpec.from_dict(json.loads(json.dumps(stored)))
    assert isinstance(spec.sampling, ParameterSampling) and isinstance(spec.policy, EarlyTerminationPolicy)
    assert isinstance(spec.run_config, RunConfiguration)
    assert spec.goal is PrimaryMetricGoal(stored["primary_metric_goal"])
    assert spec.to_dict() == stored
    assert spec.sampling.next_samples([], 2) == sampling_from_dict(stored["sampling"]).next_samples([], 2)


def test_a_damaged_stored_spec_names_what_is_wrong() -> None:
    stored = json.loads(json.dumps(OLD_SPECS[0]))
    stored["sampling"]["space"]["--r"]["upper"] = 0
    with pytest.raises(PayloadError,
                       match=r"^sweep spec: parameter '--r': randint parameter expression: upper must be at least 1"):
        SweepSpec.from_dict(stored)
    stored = json.loads(json.dumps(OLD_SPECS[1]))
    stored["policy"] = {"type": "bandit"}
    with pytest.raises(PayloadError, match=r"^sweep spec: BanditPolicy needs exactly one of slack_factor"):
        SweepSpec.from_dict(stored)
    with pytest.raises(PayloadError, match=r"^sweep spec must be an object \(a mapping\), got \['not'\] \(list\)"):
        SweepSpec.from_dict(["not"])
