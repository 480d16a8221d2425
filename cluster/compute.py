"""Compute targets: named, autoscaled node pools (Azure ML's ``ComputeTarget`` / ``AmlCompute``).

A pool's definition is ``pools/<name>.json`` in the object store; the controller reads it, scales the
pool between ``min_nodes`` and ``max_nodes``, and publishes what it sees and decides in Redis
(``cluster:pool:<name>:status``, ``cluster:pool:<name>:events``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from cluster import layout, validation
from cluster.autoscale import Isolation, Network, PoolSpec
from cluster.errors import (
    ClusterError,
    ComputeTargetException,
    ConflictError,
    NotFoundError,
    UsageError,
    WaitTimeoutError,
)

if TYPE_CHECKING:
    from cluster.workspace import Workspace

# the keys are built in cluster/layout.py; these names stay for the modules that import them from here
CONTROLLER_LEADER = layout.RK_CONTROLLER_LEADER
rk_pool_status = layout.rk_pool_status
rk_pool_events = layout.rk_pool_events


def load_specs(ws: Workspace) -> dict[str, dict[str, Any]]:
    """Raw pool records (spec + lifecycle state) by name."""
    out: dict[str, dict[str, Any]] = {}
    for info in ws.store.list(layout.POOLS_PREFIX):
        name = info.key.removeprefix(layout.POOLS_PREFIX).removesuffix(".json")
        try:
            layout.check_name("pool", name)
            out[name] = ws.store.get_json(info.key)
        except ClusterError:
            continue
    return out


class _MissingTarget(ComputeTargetException, KeyError):
    """``ws.compute_targets['nope']``: a ComputeTargetException, and still a KeyError for dict-minded code."""

    __str__ = ClusterError.__str__  # KeyError would quote the message


class ComputeTargets(dict[str, "NodePool"]):
    """``ws.compute_targets``: a dict of node pools by name; a missing name says which ones exist."""

    def __missing__(self, name: str) -> NodePool:
        raise _MissingTarget(f"no compute target named {name!r}",
                             hint=f"existing: {', '.join(sorted(self)) or '(none)'}; create one with "
                             "ComputeTarget.create(ws, name, NodePool.provisioning_configuration(...))")


def load_targets(ws: Workspace) -> ComputeTargets:
    return ComputeTargets({name: NodePool(ws, PoolSpec.from_dict(rec["spec"]))
                           for name, rec in load_specs(ws).items() if rec.get("state") != "deleting"})


class PoolStatus:
    """What the controller last observed and decided for a pool; ``serialize()`` gives a dict."""

    def __init__(self, data: dict[str, Any]) -> None:
        self._data = data

    def serialize(self) -> dict[str, Any]:
        return dict(self._data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"PoolStatus({json.dumps(self._data)})"


class ComputeTarget:
    """Base of compute targets; ``ComputeTarget.create(ws, name, config)`` creates a node pool.

    ``ComputeTarget(workspace=ws, name='cpucluster')`` looks up an existing one (a :class:`NodePool`) and raises
    :class:`~cluster.errors.ComputeTargetException` if there is none, as in Azure ML.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> ComputeTarget:
        # Azure's ComputeTarget(workspace, name) returns the concrete target: here always a node pool
        return super().__new__(NodePool if cls is ComputeTarget else cls)

    def __init__(self, workspace: Workspace, name: str | PoolSpec | None = None) -> None:
        if not hasattr(type(workspace), "store"):
            raise UsageError(f"ComputeTarget: workspace must be a Workspace, got {type(workspace).__name__}",
                             hint="ComputeTarget(workspace=Workspace.from_config(), name='cpucluster')")
        self.workspace = workspace
        if isinstance(name, PoolSpec):
            self.spec = name
            return
        if name is None:
            raise UsageError("ComputeTarget: give the name of an existing compute target",
                             hint="ComputeTarget(workspace=ws, name='cpucluster'); create one with "
                             "ComputeTarget.create(ws, name, NodePool.provisioning_configuration(...))")
        rec = pool_record(workspace, name)
        if rec.get("state") == "deleting":
            raise ComputeTargetException(f"compute target {name!r} is being deleted",
                                         hint="wait until it is gone, then create it again")
        self.spec = PoolSpec.from_dict(rec.get("spec", {}))

    name = property(lambda self: self.spec.name)
    vm_size = property(lambda self: self.spec.vm_size)
    min_nodes = property(lambda self: self.spec.min_nodes)
    max_nodes = property(lambda self: self.spec.max_nodes)
    provisioning_state = property(lambda self: "Succeeded")

    @staticmethod
    def create(workspace: Workspace, name: str, provisioning_configuration: PoolSpec) -> NodePool:
        if not isinstance(provisioning_configuration, PoolSpec):
            got = type(provisioning_configuration).__name__
            raise UsageError(f"ComputeTarget.create: the configuration must come from "
                             f"NodePool.provisioning_configuration(...), got {got}")
        spec = replace(provisioning_configuration, name=layout.check_name("pool", name))
        existing = load_specs(workspace).get(name)
        if existing and existing.get("state") != "deleting":
            raise ConflictError(f"compute target {name!r} already exists",
                                hint=f"use ws.compute_targets[{name!r}], or .update(...) to change it")
        workspace.store.put_json(layout.pool_key(name), {"spec": spec.to_dict(), "state": "active",
                                                          "created": time.time()})
        return NodePool(workspace, spec)

    def __repr__(self) -> str:
        s = self.spec
        return (f"NodePool(name={s.name!r}, vm_size={s.vm_size!r}, min_nodes={s.min_nodes}, "
                f"max_nodes={s.max_nodes}, idle_seconds_before_scaledown={s.idle_seconds_before_scaledown:g})")


class NodePool(ComputeTarget):
    """An autoscaled pool of nodes (min..max, scales to zero when min is 0)."""

    @staticmethod
    def provisioning_configuration(vm_size: str = "small", min_nodes: int = 0, max_nodes: int = 4,
                                   idle_seconds_before_scaledown: float = 120, isolation: Isolation | None = None,
                                   network: Network = "host", max_output_bytes: int = 10 * 1024**3,
                                   max_output_files: int = 10_000, max_cache_bytes: int = 20 * 1024**3,
                                   checkpoint_seconds: float = 5.0,
                                   **kwargs: Any) -> PoolSpec:
        # the name is set by ComputeTarget.create; PoolSpec validates sizes, bounds and isolation now
        kwargs = validation.warn_ignored("provisioning_configuration", kwargs, AZURE_PROVISIONING_ONLY)
        validation.check_kwargs("provisioning_configuration", kwargs, known=_PROVISIONING_ARGS)
        # Azure code passes os.environ.get(...) straight through: '4' and ' 120 ' mean 4 and 120
        min_nodes, max_nodes, max_output_bytes, max_output_files, max_cache_bytes = (
            _integer_like(v) for v in (min_nodes, max_nodes, max_output_bytes, max_output_files, max_cache_bytes))
        idle_seconds_before_scaledown = _integer_like(idle_seconds_before_scaledown)
        checkpoint_seconds = _integer_like(checkpoint_seconds)
        try:
            return PoolSpec(name="unnamed", vm_size=vm_size, min_nodes=min_nodes, max_nodes=max_nodes,
                            idle_seconds_before_scaledown=idle_seconds_before_scaledown, isolation=isolation,
                            network=network, max_output_bytes=max_output_bytes, max_output_files=max_output_files,
                            max_cache_bytes=max_cache_bytes, checkpoint_seconds=checkpoint_seconds)
        except UsageError as e:  # the pool has no name yet: do not call it 'unnamed'
            raise UsageError(e.message.replace("pool 'unnamed': ", "provisioning_configuration: "),
                             hint=e.hint) from None

    @property
    def status(self) -> PoolStatus:
        raw = self.workspace.redis.get(rk_pool_status(self.name))
        data = json.loads(raw) if raw else {"name": self.name, "controller": "not seen yet"}
        return PoolStatus({**data, "vmSize": self.vm_size,
                           "scaleSettings": {"minNodeCount": self.min_nodes, "maxNodeCount": self.max_nodes,
                                             "idleSecondsBeforeScaledown": self.spec.idle_seconds_before_scaledown}})

    def get_status(self) -> PoolStatus:
        return self.status

    def events(self, limit: int = 20) -> list[dict[str, Any]]:
        limit = validation.whole_number("limit", limit, minimum=1)
        raw = self.workspace.redis.lrange(rk_pool_events(self.name), 0, limit - 1)
        return [json.loads(e) for e in raw]

    def wait_for_completion(self, show_output: bool = False, min_node_count: int | None = None,
                            timeout_in_minutes: float = 20) -> None:
        """Wait until the controller runs this pool (and, if asked, until it has ``min_node_count`` nodes)."""
        timeout_in_minutes = validation.positive_number("timeout_in_minutes", timeout_in_minutes)
        if min_node_count is not None:
            min_node_count = validation.whole_number("min_node_count", min_node_count, minimum=0)
        started = time.monotonic()
        deadline = started + timeout_in_minutes * 60
        last = ""
        while True:
            raw = self.workspace.redis.get(rk_pool_status(self.name))
            data = json.loads(raw) if raw else None
            if data is not None:
                ready = sum(data.get("nodes", {}).get(s, 0) for s in ("idle", "busy"))
                line = f"{self.name}: {ready} node(s) ready; {data.get('decision', {}).get('reason', '')}"
                if show_output and line != last:
                    print(line, file=sys.stderr, flush=True)
                    last = line
                if min_node_count is None or ready >= min_node_count:
                    if show_output:
                        print("Succeeded", file=sys.stderr, flush=True)
                    return
            elif not self.workspace.redis.exists(CONTROLLER_LEADER) and time.monotonic() - started > 10:
                raise ClusterError("no controller is running, so nothing will scale this pool",
                                   hint="`cluster up` starts one for the embedded cluster; or run `cluster controller`")
            if time.monotonic() > deadline:
                raise WaitTimeoutError(f"pool {self.name} not ready after {timeout_in_minutes} minutes")
            time.sleep(0.5)

    def update(self, min_nodes: int | None = None, max_nodes: int | None = None,
               idle_seconds_before_scaledown: float | None = None) -> None:
        changes = {k: v for k, v in (("min_nodes", min_nodes), ("max_nodes", max_nodes),
                                     ("idle_seconds_before_scaledown", idle_seconds_before_scaledown)) if v is not None}
        rec = pool_record(self.workspace, self.name)
        self.spec = PoolSpec.from_dict({**rec["spec"], **changes})
        self.workspace.store.put_json(layout.pool_key(self.name), {**rec, "spec": self.spec.to_dict()})

    def delete(self) -> str:
        """Stop taking work: the controller drains and removes every node, cancels the runs still queued for
        this pool (nothing would ever serve them), then forgets the pool. Runs already running finish."""
        rec = pool_record(self.workspace, self.name)
        self.workspace.store.put_json(layout.pool_key(self.name), {**rec, "state": "deleting"})
        return (f"pool {self.name} is being deleted: its nodes drain (running runs finish) and its queued runs "
                "are canceled")


def pool_record(ws: Workspace, name: str) -> dict[str, Any]:
    layout.check_name("pool", name)
    try:
        return dict(ws.store.get_json(layout.pool_key(name)))
    except NotFoundError:
        raise ComputeTargetException(f"no compute target named {name!r}",
                                     hint="list them with `cluster pools list` (or ws.compute_targets)") from None


_PROVISIONING_ARGS = ("vm_size", "min_nodes", "max_nodes", "idle_seconds_before_scaledown", "isolation", "network",
                      "max_output_bytes", "max_output_files", "max_cache_bytes", "checkpoint_seconds")
#: Azure's provisioning_configuration arguments that mean nothing here (networking, login, identity, ...):
#: one warning each, then ignored, since they never change what a run computes.
AZURE_PROVISIONING_ONLY = ("vm_priority", "admin_username", "admin_user_password", "admin_user_ssh_key",
                           "vnet_resourcegroup_name", "vnet_name", "subnet_name", "tags", "description",
                           "remote_login_port_public_access", "identity_type", "identity_id", "location",
                           "enable_node_public_ip")


def _integer_like(value: Any) -> Any:
    """``'4'`` -> 4 (an integer-like string, as read from an environment variable); anything else unchanged (and
    checked by PoolSpec)."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


AmlCompute = NodePool
