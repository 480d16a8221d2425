"""``HyperDriveConfig``: what to sweep, how to sample it, when to stop -- validated before anything is submitted.

``experiment.submit(HyperDriveConfig(...))`` calls :meth:`HyperDriveConfig.submit_to`, which uploads the
source snapshot once, creates the sweep's *parent run* (a normal run record, status Running, tagged
``kind=sweep``) with the sweep's specification stored next to it (``<parent prefix>sweep.json``), registers
the sweep as active and returns a :class:`~cluster.sweep.run.HyperDriveRun` at once. From then on the
controller drives the sweep (:mod:`cluster.sweep.driver`): closing the notebook does not stop it.

Hyperparameter names are the script's argument names: ``'--regularization'`` is appended to each child's
arguments as ``--regularization <value>``. A name given without a leading ``-`` (``'learning_rate'``) is
passed as ``--learning_rate``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cluster import layout, validation
from cluster.errors import UsageError
from cluster.estimator import RunConfiguration
from cluster.sweep.policy import (
    EarlyTerminationPolicy,
    NoTerminationPolicy,
    PrimaryMetricGoal,
    coerce_goal,
)
from cluster.sweep.sampling import ParameterSampling
from cluster.sweep.sweepspec import MAX_TOTAL_RUNS, SweepSpec, argument_name

if TYPE_CHECKING:
    from cluster.experiment import Experiment
    from cluster.sweep.run import HyperDriveRun

__all__ = ["MAX_TOTAL_RUNS", "HyperDriveConfig", "SweepSpec", "argument_name"]


def _positive_int(name: str, value: Any, *, maximum: int | None = None) -> int:
    number = validation.whole_number(f"HyperDriveConfig: {name}", value, minimum=1)
    if maximum is not None and number > maximum:
        raise UsageError(f"HyperDriveConfig: {name} must be at most {maximum}, got {number}",
                         hint="split the search into several sweeps")
    return number


def _finite(name: str, value: Any) -> float:
    return validation.finite_number(f"HyperDriveConfig: {name}", value)


def _run_configuration(estimator: Any, run_config: Any) -> RunConfiguration:
    if (estimator is None) == (run_config is None):
        raise UsageError("HyperDriveConfig needs exactly one of estimator= (an Estimator) and run_config= "
                         "(a ScriptRunConfig)",
                         hint="e.g. HyperDriveConfig(estimator=est, hyperparameter_sampling=..., ...)")
    given = estimator if estimator is not None else run_config
    what = "estimator" if estimator is not None else "run_config"
    if isinstance(given, RunConfiguration):
        return given
    make = getattr(given, "run_config", None)
    if not callable(make):
        raise UsageError(f"HyperDriveConfig: {what} must be an Estimator or a ScriptRunConfig, "
                         f"not {type(given).__name__}")
    rc = make()
    if not isinstance(rc, RunConfiguration):
        raise UsageError(f"HyperDriveConfig: {what}.run_config() did not return a RunConfiguration")
    return rc


def _flags(arguments: Any) -> set[str]:
    return {a for a in arguments if isinstance(a, str) and a.startswith("-")}


_HYPERDRIVE_ARGS = ("estimator", "run_config", "hyperparameter_sampling", "primary_metric_name",
                    "primary_metric_goal", "max_total_runs", "max_concurrent_runs", "max_duration_minutes", "policy",
                    "goal_threshold")
#: Azure ML HyperDriveConfig arguments this cluster does not implement (accepted only as None).
_AZURE_HYPERDRIVE_ONLY = ("resume_from", "resume_child_runs", "pipeline", "debug_flag", "custom_run_id")


class HyperDriveConfig:
    """A hyperparameter sweep of one training script (Azure ML's ``HyperDriveConfig``).

    Give the run to sweep as ``estimator=`` (an :class:`~cluster.Estimator`) or ``run_config=`` (a
    :class:`~cluster.ScriptRunConfig`); each child runs it with the sampled values appended to its arguments.
    Everything is validated here, so a bad sweep fails before anything is submitted.
    """

    def __init__(self, hyperparameter_sampling: ParameterSampling, primary_metric_name: str,
                 primary_metric_goal: PrimaryMetricGoal | str, max_total_runs: int,
                 max_concurrent_runs: int | None = None, max_duration_minutes: float = 10080,
                 policy: EarlyTerminationPolicy | None = None, estimator: Any = None, run_config: Any = None,
                 goal_threshold: float | None = None, **unsupported: Any) -> None:
        validation.check_kwargs("HyperDriveConfig", unsupported, known=_HYPERDRIVE_ARGS,
                                ignored=dict.fromkeys(_AZURE_HYPERDRIVE_ONLY))
        self._rc = _run_configuration(estimator, run_config)
        layout.check_name("pool", self._rc.pool)
        self.estimator = estimator
        self.run_config = run_config
        if not isinstance(hyperparameter_sampling, ParameterSampling):
            raise UsageError("HyperDriveConfig: hyperparameter_sampling must be a RandomParameterSampling, "
                             f"GridParameterSampling or BayesianParameterSampling, not "
                             f"{type(hyperparameter_sampling).__name__}")
        self.hyperparameter_sampling = hyperparameter_sampling
        if not isinstance(primary_metric_name, str) or not primary_metric_name.strip():
            raise UsageError(f"HyperDriveConfig: primary_metric_name must be a non-empty string, "
                             f"got {primary_metric_name!r}",
                             hint="the name the script logs with run.log(name, value), e.g. 'accuracy'")
        self.primary_metric_name = primary_metric_name
        self.primary_metric_goal = coerce_goal(primary_metric_goal)
        self.max_total_runs = _positive_int("max_total_runs", max_total_runs, maximum=MAX_TOTAL_RUNS)
        if max_concurrent_runs is None:
            max_concurrent_runs = self.max_total_runs
        self.max_concurrent_runs = min(_positive_int("max_concurrent_runs", max_concurrent_runs),
                                       self.max_total_runs)
        self.max_duration_minutes = _finite("max_duration_minutes", max_duration_minutes)
        if self.max_duration_minutes <= 0:
            raise UsageError(f"HyperDriveConfig: max_duration_minutes must be > 0, got {max_duration_minutes!r}")
        if policy is None:
            policy = NoTerminationPolicy()
        if not isinstance(policy, EarlyTerminationPolicy):
            raise UsageError("HyperDriveConfig: policy must be BanditPolicy, MedianStoppingPolicy, "
                             f"TruncationSelectionPolicy or None, not {type(policy).__name__}")
        self.policy = policy
        self.goal_threshold = None if goal_threshold is None else _finite("goal_threshold", goal_threshold)
        self._check_arguments()
        # the stored form must round-trip (it is what the controller reads back)
        spec = self.spec()
        SweepSpec.from_dict(json.loads(json.dumps(spec.to_dict())))

    def _check_arguments(self) -> None:
        names = list(self.hyperparameter_sampling.space)
        flags = [argument_name(n) for n in names]
        if len(set(flags)) != len(flags):
            raise UsageError(f"HyperDriveConfig: hyperparameters {names} name the same argument twice",
                             hint="'lr' and '--lr' are both passed as --lr")
        clash = sorted(set(flags) & _flags(self._rc.arguments))
        if clash:
            raise UsageError(f"HyperDriveConfig: {', '.join(clash)} is both a fixed script argument and a "
                             "hyperparameter",
                             hint="remove it from script_params/arguments: the sweep appends the sampled value")
        try:
            json.dumps(list(self._rc.arguments))
        except TypeError as e:
            raise UsageError(f"HyperDriveConfig: script arguments cannot be stored: {e}") from e

    def spec(self, *, snapshot: str = "", experiment: str = "", parent_id: str = "",
             created: float | None = None) -> SweepSpec:
        """The stored form of this sweep (what ``sweep.json`` holds)."""
        return SweepSpec(
            sampling=self.hyperparameter_sampling, policy=self.policy,
            primary_metric_name=self.primary_metric_name, primary_metric_goal=self.primary_metric_goal,
            max_total_runs=self.max_total_runs, max_concurrent_runs=self.max_concurrent_runs,
            max_duration_minutes=self.max_duration_minutes, goal_threshold=self.goal_threshold,
            run_config=self._rc, snapshot=snapshot, experiment=experiment,
            parent_id=parent_id, created=time.time() if created is None else created,
        )

    def submit_to(self, experiment: Experiment, tags: Mapping[str, str] | None = None) -> HyperDriveRun:
        """Create the parent run and hand the sweep to the controller; returns at once."""
        from cluster.experiment import check_data_references, new_run_id, upload_snapshot
        from cluster.sweep import state
        from cluster.sweep.run import HyperDriveRun

        tags = dict(tags or {})
        for k, v in tags.items():
            if not isinstance(k, str) or not isinstance(v, str):
                raise UsageError(f"tags must map strings to strings, got {k!r}: {v!r}")
        ws = experiment.workspace
        check_data_references(ws, self._rc.arguments)
        digest = upload_snapshot(ws, self._rc)
        parent_id = new_run_id(experiment.name)
        spec = self.spec(snapshot=digest, experiment=experiment.name, parent_id=parent_id)
        state.create_parent(ws, spec, self._rc, tags)
        return HyperDriveRun(experiment, parent_id)

    def __repr__(self) -> str:
        return (f"HyperDriveConfig(sampling={self.hyperparameter_sampling.kind}, "
                f"parameters={list(self.hyperparameter_sampling.space)}, policy={self.policy.kind}, "
                f"primary_metric={self.primary_metric_name!r} ({self.primary_metric_goal.value}), "
                f"max_total_runs={self.max_total_runs}, max_concurrent_runs={self.max_concurrent_runs})")
