"""The workspace: one cluster's configuration plus lazily opened clients for its services."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from cluster import layout
from cluster.broker import DEFAULT_BROKER, Broker
from cluster.broker import load as load_broker
from cluster.datastore import Datastore
from cluster.errors import NotFoundError
from cluster.objectstore import ObjectStore
from cluster.settings import Settings

if TYPE_CHECKING:
    import redis

    from cluster.records import RunRecord
    from cluster.runstate import RunState


class Workspace:
    """Entry point of the SDK, like Azure ML's ``Workspace``.

    >>> ws = Workspace.from_config()            # .cluster/config.json here or in a parent folder
    >>> ds = ws.get_default_datastore()
    """

    def __init__(self, settings: Settings, *, broker: Broker | None = None) -> None:
        self.settings = settings
        self._broker = broker
        #: snapshots this workspace object uploaded: source fingerprint -> digest (resubmitting an unchanged
        #: folder neither re-packs nor re-checks it)
        self.uploaded_snapshots: dict[tuple[object, ...], str] = {}
        #: pools known to be served (a compute target, or a node seen): no "no node" note, no lookup per submit
        self.served_pools: set[str] = set()

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None, *,
                    environ: Mapping[str, str] | None = None) -> Workspace:
        """Read the configuration from ``path``, ``$CLUSTER_CONFIG``, ``.cluster/config.json`` in this
        folder or a parent, or the ``CLUSTER_*`` environment variables (in that order)."""
        ws = cls(Settings.discover(path, environ=environ))
        return ws

    # -- what the tutorial prints -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.settings.workspace_name

    @property
    def location(self) -> str:
        return self.settings.s3_url

    @property
    def resource_group(self) -> str:
        return "embedded" if self.settings.s3_endpoint.startswith("127.0.0.1") else "remote"

    def __repr__(self) -> str:
        redis_url = self.settings.redis_url_masked
        return f"Workspace(name={self.name!r}, object_store={self.location!r}, redis={redis_url!r})"

    # -- clients (opened on first use) ------------------------------------------------------------
    @cached_property
    def store(self) -> ObjectStore:
        """The cluster bucket: snapshots, runs, models, pools."""
        return ObjectStore(self.settings, self.settings.cluster_bucket)

    @cached_property
    def redis(self) -> redis.Redis:
        from cluster import redisclient

        return redisclient.connect(self.settings)

    # -- datastores -------------------------------------------------------------------------------
    @cached_property
    def datastores(self) -> dict[str, Datastore]:
        data = ObjectStore(self.settings, self.settings.data_bucket, client=self.store.client)
        return {layout.DEFAULT_DATASTORE: Datastore(layout.DEFAULT_DATASTORE, data)}

    def get_default_datastore(self) -> Datastore:
        return self.datastores[layout.DEFAULT_DATASTORE]

    def datastore(self, name: str) -> Datastore:
        try:
            return self.datastores[name]
        except KeyError:
            raise NotFoundError(f"no datastore named {name!r}",
                                hint=f"known: {', '.join(self.datastores)}") from None

    # -- compute ----------------------------------------------------------------------------------
    @property
    def compute_targets(self) -> dict[str, Any]:
        """Node pools by name, read from the object store (empty until one is created)."""
        from cluster.compute import load_targets

        return load_targets(self)

    # -- runs -------------------------------------------------------------------------------------
    @cached_property
    def runs(self) -> RunState:
        from cluster.runstate import RunState

        return RunState(self.store, self.redis)

    def get_run(self, run_id: str) -> Any:
        """Any run by id alone (``Run.get(ws, run_id)``): a ``Run``, or a ``HyperDriveRun`` for a sweep."""
        return self.run_of(self.runs.record(run_id))

    def run_of(self, record: RunRecord) -> Any:
        """The run of a record already read: a ``Run``, or a ``HyperDriveRun`` for a sweep."""
        from cluster.experiment import Experiment
        from cluster.records import is_sweep
        from cluster.run import Run
        from cluster.sweep.run import HyperDriveRun

        experiment = Experiment(self, record.experiment)
        return HyperDriveRun(experiment, record.run_id) if is_sweep(record) else Run(experiment, record.run_id)

    @cached_property
    def broker(self) -> Broker:
        """The pools' queues (:mod:`cluster.broker`): Celery's unless the workspace was given another."""
        if self._broker is None:
            self._broker = load_broker(DEFAULT_BROKER, self.settings, self.redis)
        return self._broker

    def enqueue(self, run_id: str, pool: str) -> None:
        """Send the run id (nothing else) to the pool's queue."""
        self.broker.enqueue(run_id, pool)
