"""Named node sizes: what a run on a node of that size may use.

A pool's ``vm_size`` names one of these. The node applies ``cpus`` and ``memory_bytes`` as limits to the
run's process (and the Kubernetes provider uses them as the pod's requests/limits). Azure VM names are
accepted as aliases, case-insensitively, so ``AmlCompute.provisioning_configuration(vm_size="STANDARD_D2_V2")``
keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass

from cluster.errors import UsageError

GiB = 1024**3


@dataclass(frozen=True)
class NodeSize:
    """A node size: how many CPUs and how much memory a run on that node may use."""

    name: str
    cpus: int
    memory_bytes: int
    description: str


SIZES: dict[str, NodeSize] = {
    s.name: s
    for s in (
        NodeSize("small", 1, 2 * GiB, "1 CPU, 2 GiB memory"),
        NodeSize("medium", 2, 4 * GiB, "2 CPUs, 4 GiB memory"),
        NodeSize("large", 4, 16 * GiB, "4 CPUs, 16 GiB memory"),
    )
}

#: Azure VM sizes (upper-case) -> our size names.
ALIASES: dict[str, str] = {
    "STANDARD_D1_V2": "small",
    "STANDARD_D2_V2": "medium",
    "STANDARD_D3_V2": "large",
    "STANDARD_D4_V2": "large",
}


def get_size(name: str) -> NodeSize:
    """The size called ``name`` (a size name or an Azure alias, any case); UsageError if unknown."""
    if isinstance(name, str):
        key = name.strip()
        size = SIZES.get(key.lower())
        if size is None and key.upper() in ALIASES:
            size = SIZES[ALIASES[key.upper()]]
        if size is not None:
            return size
    valid = ", ".join([*SIZES, *ALIASES])
    raise UsageError(f"unknown node size {name!r}", hint=f"use one of: {valid}")


__all__ = ["ALIASES", "SIZES", "GiB", "NodeSize", "get_size"]
