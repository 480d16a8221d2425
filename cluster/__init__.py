"""A self-hosted training cluster with Azure ML's workflow: Workspace, Experiment, Estimator, Run, Model.

The public API, grouped by concept. Import from here; module paths may change.

Names are imported on first use (PEP 562), so ``from cluster import Run`` inside a training script costs a
few milliseconds: it does not load the object-store, Redis or Celery clients that submitting needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: public name -> the module that defines it
_HOMES = {
    "AmlCompute": "compute", "ComputeTarget": "compute", "NodePool": "compute",
    "DataReference": "datareference", "Datastore": "datastore",
    "ClusterError": "errors", "ComputeTargetException": "errors", "ConfigError": "errors",
    "ConflictError": "errors", "CredentialsError": "errors",
    "DataError": "errors", "NotFoundError": "errors", "RunFailedError": "errors", "ServiceError": "errors",
    "SnapshotError": "errors", "UsageError": "errors",
    "Estimator": "estimator", "RunConfiguration": "estimator", "ScriptRunConfig": "estimator",
    "Experiment": "experiment", "Model": "model", "RunStatus": "records", "Run": "run", "Settings": "settings",
    "Workspace": "workspace",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'cluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cluster.{home}"), name)
    globals()[name] = value  # next time a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
