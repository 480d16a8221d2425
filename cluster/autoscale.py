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

from collections.abc import Mapping
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import Field

from cluster.errors import PayloadError, UsageError
from cluster.layout import check_name
from cluster.schema import Record, Seconds, WholeNumber, load, record
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


Isolation = Literal["required", "best-effort"]
Network = Literal["host", "none"]
#: a positive whole number of bytes or files
Cap = Annotated[WholeNumber, Field(ge=1)]


@record
class PoolSpec(Record):
    """A pool definition (a compute target): node size, node count bounds and the idle timeout.

    The field types are the checks (cluster/schema.py); ``__post_init__`` adds the rules between fields.
    """

    __what__ = "pool {name!r}"

    name: str
    vm_size: str = "small"
    min_nodes: Annotated[WholeNumber, Field(ge=0)] = 0
    max_nodes: Annotated[WholeNumber, Field(ge=1)] = 4
    idle_seconds_before_scaledown: Seconds = 120.0
    #: 'required' | 'best-effort' | None (the deployment's default: best-effort locally, required on Kubernetes)
    isolation: Isolation | None = None
    #: 'host' (runs reach the network: pip, datasets) | 'none' (a private network namespace per run)
    network: Network = "host"
    max_output_bytes: Cap = 10 * 1024**3
    max_output_files: Cap = 10_000
    #: each node's cache (snapshots, environments, mounted data) is pruned, least recently used first, to this
    max_cache_bytes: Cap = 20 * 1024**3
    #: how often a node uploads a running script's ./outputs/checkpoints (seconds; 0: only when the script ends)
    checkpoint_seconds: Seconds = 5.0

    def __post_init__(self) -> None:
        check_name("pool", self.name)
        get_size(self.vm_size)
        if self.min_nodes > self.max_nodes:
            raise UsageError(
                f"pool {self.name!r}: need 0 <= min_nodes <= max_nodes, got min_nodes={self.min_nodes}, "
                f"max_nodes={self.max_nodes}",
                hint="lower min_nodes or raise max_nodes",
            )

    def node_args(self, default_isolation: str) -> list[str]:
        """The `cluster worker` options that carry this pool's isolation and output settings to its nodes."""
        return ["--isolation", self.isolation or default_isolation, "--network", self.network,
                "--max-output-bytes", str(self.max_output_bytes), "--max-output-files", str(self.max_output_files),
                "--max-cache-bytes", str(self.max_cache_bytes), "--checkpoint-seconds", f"{self.checkpoint_seconds:g}"]

    @classmethod
    def from_dict(cls, data: Any) -> PoolSpec:
        """A stored pool definition (``pools/<name>.json``); unknown keys are ignored, missing ones take defaults."""
        if not isinstance(data, Mapping) or "name" not in data:
            raise PayloadError(
                f"a pool definition must be an object with a 'name', got {data!r}",
                hint="re-create the pool, or fix its pools/<name>.json in the object store",
            )
        return load(cls, data, error=UsageError)


@record
class NodeView(Record):
    """One node of a pool as the controller sees it.

    ``static`` nodes were joined by hand (``cluster worker``): used, counted, never scaled away.
    ``idle_since`` is when an IDLE node last finished (or started) idling; ``started_at`` when it was started.
    """

    __what__ = "node {name!r}"

    name: str
    state: NodeState  # a NodeState or its value ("idle")
    static: bool = False
    idle_since: float | None = None
    started_at: float = 0.0


@record
class PoolObservation(Record):
    """Everything :func:`decide` needs about one pool at one instant."""

    pool: PoolSpec
    nodes: tuple[NodeView, ...]
    queued: Annotated[WholeNumber, Field(ge=0)]
    running: Annotated[WholeNumber, Field(ge=0)]
    now: float

    def __post_init__(self) -> None:
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise UsageError(f"pool {self.pool.name!r}: node names must be unique, got {sorted(names)}")


@record
class ScalingDecision(Record):
    """What to do with one pool: start ``start`` new nodes and drain the nodes named in ``drain``."""

    pool: str
    desired: int
    start: int
    drain: tuple[str, ...]
    reason: str


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
