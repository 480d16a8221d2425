"""A self-hosted training cluster with Azure ML's workflow: Workspace, Experiment, Estimator, Run, Model.

The public API, grouped by concept. Import from here; module paths may change.
"""

from cluster.compute import AmlCompute, ComputeTarget, NodePool
from cluster.datareference import DataReference
from cluster.datastore import Datastore
from cluster.errors import (
    ClusterError,
    ComputeTargetException,
    ConfigError,
    ConflictError,
    CredentialsError,
    DataError,
    NotFoundError,
    RunFailedError,
    ServiceError,
    SnapshotError,
    UsageError,
)
from cluster.estimator import Estimator, RunConfiguration, ScriptRunConfig
from cluster.experiment import Experiment
from cluster.model import Model
from cluster.records import RunStatus
from cluster.run import Run
from cluster.settings import Settings
from cluster.workspace import Workspace

__all__ = [
    # workspace and configuration
    "Settings",
    "Workspace",
    # compute
    "AmlCompute",
    "ComputeTarget",
    "NodePool",
    # data
    "DataReference",
    "Datastore",
    # experiments and runs
    "Estimator",
    "Experiment",
    "Run",
    "RunConfiguration",
    "RunStatus",
    "ScriptRunConfig",
    # models
    "Model",
    # errors
    "ClusterError",
    "ComputeTargetException",
    "ConfigError",
    "ConflictError",
    "CredentialsError",
    "DataError",
    "NotFoundError",
    "RunFailedError",
    "ServiceError",
    "SnapshotError",
    "UsageError",
]
