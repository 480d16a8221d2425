"""The config file another host receives: what a node, the controller or a client needs, and nothing more.

`cluster config export --for node|controller|client` reads the embedded cluster's state directory:

- ``node``: the Redis user ``node`` and (with SeaweedFS) the S3 identity ``node`` -- never the admin keys;
- ``controller``: the Redis user ``controller`` and the admin S3 keys (it creates buckets, reads every run);
- ``client``: the workspace's own credentials (what `Workspace.from_config()` uses to submit and read);

each with the endpoints, and the cluster's CA certificate (``tls_ca``) when the servers serve TLS. The node,
controller and UI passwords of other roles are left out.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cluster import tls
from cluster.embedded import CONTROLLER_CONFIG_FILE, NODE_CONFIG_FILE
from cluster.errors import ConfigError
from cluster.settings import CONFIG_FILE, Settings

ROLES = ("node", "controller", "client")
_FILES = {"node": NODE_CONFIG_FILE, "controller": CONTROLLER_CONFIG_FILE, "client": CONFIG_FILE}


def export(state_dir: Path, role: str) -> dict[str, Any]:
    """The settings for ``role`` as a JSON-ready dict (only the known Settings fields)."""
    if role not in ROLES:
        raise ConfigError(f"no config for {role!r}: choose one of {', '.join(ROLES)}")
    path = Path(state_dir) / _FILES[role]
    if not path.is_file():
        hint = "run `cluster up` first" if role == "client" else \
            "run `cluster up` again: this state directory predates per-role credentials"
        raise ConfigError(f"no {role} configuration in {state_dir} ({path.name} is missing)", hint=hint)
    config = Settings.from_file(path).to_dict()
    if role != "controller":
        config["metrics_port"] = 0  # the controller's endpoint is on the cluster host's loopback: not for them
    return config


def reachable_warning(config: dict[str, Any]) -> str | None:
    """A sentence when the exported config points at loopback (useless on another host)."""
    host = str(config.get("s3_endpoint", "")).rsplit(":", 1)[0].strip("[]")
    if tls.is_loopback(host):
        return (f"warning: this cluster listens on {host} only; another host cannot reach it with this file. "
                "Run `cluster down` and `cluster up --listen ADDR` (ADDR: this host's address on the network the "
                "other hosts use), then export again")
    return None


def write(config: dict[str, Any], out: Path) -> None:
    """Write the file readable by its owner only (it holds credentials)."""
    from cluster.processes import write_private

    out.parent.mkdir(parents=True, exist_ok=True)
    write_private(out, json.dumps(config, indent=2) + "\n")
