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
    from cluster.environment import CondaDependencies, Environment
    from cluster.errors import (
        ClusterError,
        ComputeTargetException,
        ConfigError,
        ConflictError,
        CredentialsError,
        DataError,
        IgnoredArgumentWarning,
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
    # environments
    "CondaDependencies",
    "Environment",
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
    "IgnoredArgumentWarning",
    # version
    "VERSION",
    "__version__",
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
    "Environment": "environment", "CondaDependencies": "environment", "IgnoredArgumentWarning": "errors",
}


def _version() -> str:
    """The SDK's version (``cluster.__version__``, also ``cluster.VERSION`` as in ``azureml.core``): the installed
    distribution's; read on first use, so importing ``cluster`` stays cheap."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cluster")
    except PackageNotFoundError:  # a checkout on sys.path that was never installed
        return "0+unknown"


def __getattr__(name: str) -> Any:
    if name in ("__version__", "VERSION"):
        globals()["__version__"] = globals()["VERSION"] = value = _version()
        return value
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'cluster' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"cluster.{home}"), name)
    globals()[name] = value  # next time a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
