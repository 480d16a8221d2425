"""The controller's scaling decision for one pool, as a pure function of what it observed.

A pool (Azure's "compute target") has ``min_nodes``..``max_nodes`` nodes and scales to zero when
``min_nodes`` is 0. Every tick the controller builds a :class:`PoolObservation` (the pool's nodes with
their states, how many runs are queued and running, the current time) and calls :func:`decide`, which
returns a :class:`ScalingDecision`: how many nodes to start and which ones to drain. ``decide`` does no
I/O and reads no clock, so the rules below are tested by feeding it observations.

The rules:

* **Desired size** = ``queued + running`` clamped to ``[min_nodes, max_nodes]``. Running runs keep their
  nodes; the queue length alone would scale a busy pool down under its own runs.
* **Capacity** = nodes that are STARTING, IDLE or BUSY. LOST nodes (missed heartbeats) and DRAINING nodes
  (told to finish and exit) do not count: they will not take new runs.
* **Scale up** as soon as runs wait: start ``desired - capacity`` nodes when that is positive, but never
  let the nodes that occupy a slot (STARTING + IDLE + BUSY + DRAINING) exceed ``max_nodes``. A draining
  node still holds its machine until it exits, so it still holds its slot. LOST nodes hold none.
* **Scale down** only when capacity exceeds the desired size, by at most that excess (so never below
  ``min_nodes``, since desired >= min_nodes). Only IDLE nodes are candidates, and only those idle for at
  least ``idle_seconds_before_scaledown`` (``now - idle_since``); an IDLE node with no ``idle_since`` is
  not a candidate. BUSY nodes are never drained, and neither are static nodes (joined by hand with
  ``cluster worker``): they count as capacity but the controller did not start them, so it never stops
  them. The longest-idle nodes go first.
* **Deterministic**: ties are broken by node name, so the same observation gives the same decision.

A decision never both starts and drains: starting happens only when capacity is short of the desired
size, draining only when it exceeds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cluster.errors import PayloadError, UsageError
from cluster.layout import check_name
from cluster.sizes import get_size


class NodeState(StrEnum):
    """What a node is doing, as the controller sees it (a ``str`` Enum: ``NodeState.IDLE == "idle"``)."""

    STARTING = "starting"  # asked for, not yet heartbeating
    IDLE = "idle"  # heartbeating, no run
    BUSY = "busy"  # running a run
    DRAINING = "draining"  # finishing its run (if any), then exits; takes no new runs
    LOST = "lost"  # stopped heartbeating


#: States that can take (or are running) a run.
CAPACITY_STATES = frozenset({NodeState.STARTING, NodeState.IDLE, NodeState.BUSY})
#: States whose machine/process still exists, so it occupies one of the pool's max_nodes slots.
SLOT_STATES = CAPACITY_STATES | {NodeState.DRAINING}


def _check_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UsageError(f"{field} must be a whole number, got {value!r}")
    return value


@dataclass(frozen=True)
class PoolSpec:
    """A pool definition (a compute target): node size, node count bounds and the idle timeout."""

    name: str
    vm_size: str = "small"
    min_nodes: int = 0
    max_nodes: int = 4
    idle_seconds_before_scaledown: float = 120.0
    #: 'required' | 'best-effort' | None (the deployment's default: best-effort locally, required on Kubernetes)
    isolation: str | None = None
    #: 'host' (runs reach the network: pip, datasets) | 'none' (a private network namespace per run)
    network: str = "host"
    max_output_bytes: int = 10 * 1024**3
    max_output_files: int = 10_000
    #: each node's cache (snapshots, environments, mounted data) is pruned, least recently used first, to this
    max_cache_bytes: int = 20 * 1024**3
    #: how often a node uploads a running script's ./outputs/checkpoints (seconds; 0: only when the script ends)
    checkpoint_seconds: float = 5.0

    def __post_init__(self) -> None:
        check_name("pool", self.name)
        if self.isolation not in (None, "required", "best-effort"):
            raise UsageError(f"pool {self.name!r}: isolation must be 'required' or 'best-effort', "
                             f"got {self.isolation!r}", hint="see docs/security.md")
        if self.network not in ("host", "none"):
            raise UsageError(f"pool {self.name!r}: network must be 'host' or 'none', got {self.network!r}")
        for cap in ("max_output_bytes", "max_output_files", "max_cache_bytes"):
            if _check_int(cap, getattr(self, cap)) < 1:
                raise UsageError(f"pool {self.name!r}: {cap} must be at least 1")
        get_size(self.vm_size)
        lo = _check_int("min_nodes", self.min_nodes)
        hi = _check_int("max_nodes", self.max_nodes)
        if hi < 1:
            raise UsageError(
                f"pool {self.name!r}: max_nodes must be at least 1, got {hi}",
                hint="use min_nodes=0 to let the pool scale to zero",
            )
        if not 0 <= lo <= hi:
            raise UsageError(
                f"pool {self.name!r}: need 0 <= min_nodes <= max_nodes, got min_nodes={lo}, max_nodes={hi}",
                hint="lower min_nodes or raise max_nodes",
            )
        idle = self.idle_seconds_before_scaledown
        try:
            usable = isinstance(idle, int | float) and not isinstance(idle, bool) and math.isfinite(idle) and idle >= 0
        except OverflowError:  # an int beyond float range
            usable = False
        if not usable:
            raise UsageError(
                f"pool {self.name!r}: idle_seconds_before_scaledown must be a number >= 0, got {idle!r}",
            )
        object.__setattr__(self, "idle_seconds_before_scaledown", float(idle))
        every = self.checkpoint_seconds
        if isinstance(every, bool) or not isinstance(every, int | float) or not math.isfinite(every) or every < 0:
            raise UsageError(f"pool {self.name!r}: checkpoint_seconds must be a number >= 0, got {every!r}")
        object.__setattr__(self, "checkpoint_seconds", float(every))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (the shape of ``pools/<name>.json``)."""
        return {
            "name": self.name,
            "vm_size": self.vm_size,
            "min_nodes": self.min_nodes,
            "max_nodes": self.max_nodes,
            "idle_seconds_before_scaledown": self.idle_seconds_before_scaledown,
            "isolation": self.isolation,
            "network": self.network,
            "max_output_bytes": self.max_output_bytes,
            "max_output_files": self.max_output_files,
            "max_cache_bytes": self.max_cache_bytes,
            "checkpoint_seconds": self.checkpoint_seconds,
        }

    def node_args(self, default_isolation: str) -> list[str]:
        """The `cluster worker` options that carry this pool's isolation and output settings to its nodes."""
        return ["--isolation", self.isolation or default_isolation, "--network", self.network,
                "--max-output-bytes", str(self.max_output_bytes), "--max-output-files", str(self.max_output_files),
                "--max-cache-bytes", str(self.max_cache_bytes), "--checkpoint-seconds", f"{self.checkpoint_seconds:g}"]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PoolSpec:
        """Inverse of :meth:`to_dict`; unknown keys are ignored, missing ones take their defaults."""
        if not isinstance(data, Mapping) or "name" not in data:
            raise PayloadError(
                f"a pool definition must be an object with a 'name', got {data!r}",
                hint="re-create the pool, or fix its pools/<name>.json in the object store",
            )
        fields = ("name", "vm_size", "min_nodes", "max_nodes", "idle_seconds_before_scaledown", "isolation",
                  "network", "max_output_bytes", "max_output_files", "max_cache_bytes", "checkpoint_seconds")
        return cls(**{k: data[k] for k in fields if k in data})


@dataclass(frozen=True)
class NodeView:
    """One node of a pool as the controller sees it.

    ``static`` nodes were joined by hand (``cluster worker``): used, counted, never scaled away.
    ``idle_since`` is when an IDLE node last finished (or started) idling; ``started_at`` when it was started.
    """

    name: str
    state: NodeState
    static: bool = False
    idle_since: float | None = None
    started_at: float = 0.0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "state", NodeState(self.state))
        except ValueError:
            valid = ", ".join(s.value for s in NodeState)
            raise UsageError(f"node {self.name!r}: unknown state {self.state!r}", hint=f"use one of: {valid}") from None


@dataclass(frozen=True)
class PoolObservation:
    """Everything :func:`decide` needs about one pool at one instant."""

    pool: PoolSpec
    nodes: tuple[NodeView, ...]
    queued: int
    running: int
    now: float

    def __post_init__(self) -> None:
        for field in ("queued", "running"):
            if _check_int(field, getattr(self, field)) < 0:
                raise UsageError(f"{field} must be >= 0, got {getattr(self, field)}")
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise UsageError(f"pool {self.pool.name!r}: node names must be unique, got {sorted(names)}")


@dataclass(frozen=True)
class ScalingDecision:
    """What to do with one pool: start ``start`` new nodes and drain the nodes named in ``drain``."""

    pool: str
    desired: int
    start: int
    drain: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "pool": self.pool,
            "desired": self.desired,
            "start": self.start,
            "drain": list(self.drain),
            "reason": self.reason,
        }


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def decide(obs: PoolObservation) -> ScalingDecision:
    """The scaling decision for one observation (see the module docstring for the rules)."""
    pool = obs.pool
    demand = obs.queued + obs.running
    desired = min(max(demand, pool.min_nodes), pool.max_nodes)

    count = {state: 0 for state in NodeState}
    for node in obs.nodes:
        count[node.state] += 1
    capacity = sum(count[s] for s in CAPACITY_STATES)
    occupied = sum(count[s] for s in SLOT_STATES)

    bounds = f"max {pool.max_nodes}" if pool.min_nodes == 0 else f"min {pool.min_nodes}, max {pool.max_nodes}"
    head = f"{obs.queued} queued + {obs.running} running -> want {desired} ({bounds})"
    have = f"{count[NodeState.IDLE]} idle + {count[NodeState.BUSY]} busy + {count[NodeState.STARTING]} starting"
    if count[NodeState.DRAINING]:
        have += f" (+ {count[NodeState.DRAINING]} draining)"
    if count[NodeState.LOST]:
        have += f" (+ {count[NodeState.LOST]} lost)"

    start = 0
    drain: tuple[str, ...] = ()
    if desired > capacity:
        free_slots = max(pool.max_nodes - occupied, 0)
        start = min(desired - capacity, free_slots)
        action = f"start {start}"
        if start < desired - capacity:
            action += f" (only {free_slots} of {pool.max_nodes} slots free while {_plural(occupied, 'node')} exist)"
    elif capacity > desired:
        excess = capacity - desired
        timeout = pool.idle_seconds_before_scaledown
        candidates = sorted(
            (
                n
                for n in obs.nodes
                if n.state is NodeState.IDLE
                and not n.static
                and n.idle_since is not None
                and obs.now - n.idle_since >= timeout
            ),
            key=lambda n: (n.idle_since, n.name),
        )
        drain = tuple(n.name for n in candidates[:excess])
        if drain:
            action = f"drain {len(drain)} idle for >= {timeout:g}s: {', '.join(drain)}"
        else:
            action = f"keep all ({excess} more than wanted, but no non-static node has idled >= {timeout:g}s)"
    else:
        action = "no change"

    reason = f"{head}; {have} -> {action}"
    return ScalingDecision(pool=pool.name, desired=desired, start=start, drain=drain, reason=reason)


__all__ = [
    "CAPACITY_STATES",
    "SLOT_STATES",
    "NodeState",
    "NodeView",
    "PoolObservation",
    "PoolSpec",
    "ScalingDecision",
    "decide",
]
