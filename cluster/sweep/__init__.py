"""Hyperparameter sweeps (Azure ML HyperDrive): search spaces, samplers, early termination.

The decision logic only -- pure functions of their inputs, no servers, no I/O::

    from cluster.sweep import RandomParameterSampling, BanditPolicy, PrimaryMetricGoal, choice, loguniform

    sampling = RandomParameterSampling({"--lr": loguniform(-9, -2), "--batch": choice(16, 32)}, seed=1)
    params = sampling.next_samples(history=[], n=4, goal=PrimaryMetricGoal.MAXIMIZE)
    stop = BanditPolicy(slack_factor=0.1).evaluate({"run-1": [0.8], "run-2": [0.5]}, "maximize")
"""

from __future__ import annotations

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
from cluster.sweep.sampling import (
    BayesianParameterSampling,
    GridParameterSampling,
    ParameterSampling,
    RandomParameterSampling,
    Trial,
    sampling_from_dict,
)

# HyperDriveConfig (wiring samplers and policies to child runs) will live in cluster/sweep/config.py:
# from cluster.sweep.config import HyperDriveConfig

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
    # "HyperDriveConfig",  # once cluster/sweep/config.py exists
]
