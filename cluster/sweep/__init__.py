"""Hyperparameter sweeps (Azure ML HyperDrive): search spaces, samplers, early termination, and the sweep.

The decision logic is pure -- functions of their inputs, no servers, no I/O::

    from cluster.sweep import RandomParameterSampling, BanditPolicy, PrimaryMetricGoal, choice, loguniform

    sampling = RandomParameterSampling({"--lr": loguniform(-9, -2), "--batch": choice(16, 32)}, seed=1)
    params = sampling.next_samples(history=[], n=4, goal=PrimaryMetricGoal.MAXIMIZE)
    stop = BanditPolicy(slack_factor=0.1).evaluate({"run-1": [0.8], "run-2": [0.5]}, "maximize")

The sweep itself: ``experiment.submit(HyperDriveConfig(estimator=est, hyperparameter_sampling=sampling, ...))``
creates the parent run and returns a :class:`HyperDriveRun` at once; the controller drives the sweep from then
on (:mod:`cluster.sweep.driver`), so it goes on when the submitting process exits.
"""

from __future__ import annotations

from cluster.sweep.config import HyperDriveConfig
from cluster.sweep.expressions import (
    Choice,
    LogUniform,
    Normal,
    ParameterExpression,
    QLogUniform,
    QNormal,
    QUniform,
    RandInt,
    Uniform,
    choice,
    expression_from_dict,
    loguniform,
    normal,
    qloguniform,
    qnormal,
    quniform,
    randint,
    uniform,
)
from cluster.sweep.policy import (
    BanditPolicy,
    EarlyTerminationPolicy,
    MedianStoppingPolicy,
    NoTerminationPolicy,
    PrimaryMetricGoal,
    StopDecision,
    TruncationSelectionPolicy,
    policy_from_dict,
)
from cluster.sweep.run import HyperDriveRun
from cluster.sweep.sampling import (
    BayesianParameterSampling,
    GridParameterSampling,
    ParameterSampling,
    RandomParameterSampling,
    Trial,
    sampling_from_dict,
)

__all__ = [
    "BanditPolicy",
    "BayesianParameterSampling",
    "Choice",
    "EarlyTerminationPolicy",
    "GridParameterSampling",
    "LogUniform",
    "MedianStoppingPolicy",
    "NoTerminationPolicy",
    "Normal",
    "ParameterExpression",
    "ParameterSampling",
    "PrimaryMetricGoal",
    "QLogUniform",
    "QNormal",
    "QUniform",
    "RandInt",
    "RandomParameterSampling",
    "StopDecision",
    "Trial",
    "TruncationSelectionPolicy",
    "Uniform",
    "choice",
    "expression_from_dict",
    "loguniform",
    "normal",
    "policy_from_dict",
    "qloguniform",
    "qnormal",
    "quniform",
    "randint",
    "sampling_from_dict",
    "uniform",
    "HyperDriveConfig",
    "HyperDriveRun",
]
