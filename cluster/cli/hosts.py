"""`cluster config export`: the config file another host (a node, the controller, a client) needs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cluster import hostconfig, validation


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser("config", help="config files for other hosts").add_subparsers(dest="config_cmd",
                                                                                         metavar="ACTION")
    config.required = True
    p = config.add_parser("export", help="write the config a node, the controller or a client on another host needs",
                          description="Endpoints, that role's credentials only (a node gets the node identity, never "
                          "the admin keys) and, when the cluster serves TLS, its CA certificate. The file is all the "
                          "other host needs besides the package: `cluster worker --config FILE --pool P`.")
    p.add_argument("--for", dest="role", required=True, choices=hostconfig.ROLES, help="who receives the file")
    p.add_argument("--out", type=Path, help="write here (mode 0600) instead of standard output")
    p.add_argument("--state-dir", type=Path, help="the cluster's state dir (default: .cluster here or in a parent)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from cluster.cli.infra import find_state_dir

    state_dir = args.state_dir or find_state_dir()
    if args.out is not None:
        validation.local_dir_target("--out", args.out.parent)
    config = hostconfig.export(state_dir, args.role)
    warning = hostconfig.reachable_warning(config)
    if warning:
        print(warning, file=sys.stderr)
    if args.out is None:
        print(json.dumps(config, indent=2))
    else:
        hostconfig.write(config, args.out)
        print(f"wrote the {args.role} config to {args.out} (0600: it holds credentials); on the other host: "
              + ("`cluster worker --config FILE --pool POOL`" if args.role == "node" else
                 "`cluster controller --config FILE --no-autoscale`" if args.role == "controller" else
                 "`Workspace.from_config(FILE)` or CLUSTER_CONFIG=FILE"), file=sys.stderr)
    return 0
