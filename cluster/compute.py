"""Compute targets (node pools). A pool's definition lives in the object store under pools/<name>.json."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cluster import layout
from cluster.errors import ClusterError

if TYPE_CHECKING:
    from cluster.workspace import Workspace


def load_targets(ws: Workspace) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    for info in ws.store.list("pools/"):
        name = info.key.removeprefix("pools/").removesuffix(".json")
        try:
            layout.check_name("pool", name)
        except ClusterError:
            continue
        targets[name] = ws.store.get_json(info.key)
    return targets
