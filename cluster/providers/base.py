"""The interface between the autoscaling controller and whatever creates node machines/processes.

The controller decides (:func:`cluster.autoscale.decide`) and a provider acts: it starts nodes for a
pool and stops them once they have drained. A provider only manages machines or processes; the nodes
themselves report their state (idle, busy, ...) through Redis heartbeats, not through the provider.

Implementations: ``cluster.providers.local`` (node processes on this machine) and
``cluster.providers.kubernetes`` (one pod per node).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from cluster.autoscale import PoolSpec


@runtime_checkable
class Provider(Protocol):
    """Creates and removes the nodes of a pool."""

    #: Short name used in configuration and messages, e.g. ``"local"`` or ``"kubernetes"``.
    name: str

    def start_nodes(self, pool: PoolSpec, count: int) -> list[str]:
        """Create ``count`` new nodes for ``pool``; return their node names (each node joins under that name)."""
        ...

    def stop_node(self, pool: PoolSpec, node: str, *, force: bool = False) -> None:
        """Remove a node's machine/process, after it drained. ``force``: the node is lost (silent, hung):
        remove it at once, with everything it started, without waiting for it. A node already gone is fine.
        Must not block the controller for long."""
        ...

    def list_nodes(self, pool: PoolSpec) -> list[str]:
        """Names of the nodes of ``pool`` this provider currently has (alive or starting), sorted."""
        ...


__all__ = ["Provider"]
