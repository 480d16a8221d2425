"""`cluster up|down|status|data`: the embedded cluster and the datastore."""

from __future__ import annotations

import argparse
from pathlib import Path

from cluster import embedded, validation
from cluster.errors import ConfigError
from cluster.settings import CONFIG_DIR, Settings
from cluster.workspace import Workspace


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="start the embedded cluster (Redis + S3 server) and write .cluster/config.json",
                       description="Start real Redis (password, AOF) and a real S3 server on 127.0.0.1, create the "
                       "buckets and write the config file. Idempotent: a running cluster is reported, not restarted.")
    p.add_argument("--state-dir", type=Path, default=Path(CONFIG_DIR), help="where data, logs and config live "
                   "(default: ./.cluster)")
    p.add_argument("--redis-port", type=int, help="Redis port (default: the previous one if free, else any free)")
    p.add_argument("--s3-port", type=int, help="S3 port (default: the previous one if free, else any free)")
    p.add_argument("--name", help="workspace name (default: the parent folder's name)")
    p.add_argument("--workers", type=int, default=0, help="also start N static nodes (see --pool)")
    p.add_argument("--pool", default="default", help="pool for --workers nodes (default: default)")
    p.add_argument("--listen", metavar="ADDR", help="serve Redis and the S3 endpoint on ADDR, the address other "
                   "hosts reach this one on (default: the config's `listen`, else 127.0.0.1 only); off loopback both "
                   "serve TLS only, with a private CA (docs/multihost.md)")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="with --listen: no TLS (passwords and data in clear text on the network; a warning is printed)")
    p.add_argument("--no-controller", action="store_true",
                   help="start no controller here (it runs on another host: `cluster config export --for controller`)")
    p.add_argument("--no-ui", action="store_true", help="start no dashboard")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("down", help="stop what `cluster up` started (data is kept)")
    p.add_argument("--state-dir", type=Path, help="default: .cluster here or in a parent folder")
    p.set_defaults(func=cmd_down)

    p = sub.add_parser("status", help="check every service with a real request")
    p.add_argument("--config", help="path of config.json (default: discovered)")
    p.set_defaults(func=cmd_status)

    data = sub.add_parser("data", help="datasets and the default datastore").add_subparsers(dest="data_cmd",
                                                                                          metavar="ACTION")
    data.required = True
    p = data.add_parser("mnist", help="get MNIST's four .gz files, checksums verified",
                        description="Download MNIST from public mirrors (tried in order), or import local copies "
                        "with --source; every file's sha256 is verified.")
    p.add_argument("--dest", type=Path, default=Path("data"), help="folder to put the files in (default: ./data)")
    p.add_argument("--source", type=Path, help="import from this folder instead of downloading")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_mnist)

    p = data.add_parser("upload", help="upload a folder to the default datastore")
    p.add_argument("src_dir", type=Path)
    p.add_argument("--target-path", default=None, help="folder in the datastore (default: its root)")
    p.add_argument("--overwrite", action="store_true", help="replace files that differ")
    p.set_defaults(func=cmd_upload)

    p = data.add_parser("ls", help="list files in the default datastore")
    p.add_argument("prefix", nargs="?", default="")
    p.set_defaults(func=cmd_ls)


def find_state_dir(start: Path | None = None) -> Path:
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / CONFIG_DIR / embedded.STATE_FILE).exists():
            return folder / CONFIG_DIR
    raise ConfigError(f"no embedded cluster state (.cluster/state.json) in {here} or its parents",
                      hint="pass --state-dir, or run `cluster up` first")


def cmd_up(args: argparse.Namespace) -> int:
    for flag, port in (("--redis-port", args.redis_port), ("--s3-port", args.s3_port)):
        if port is not None:
            validation.whole_number(flag, port, minimum=1, maximum=65535)
    validation.whole_number("--workers", args.workers, minimum=0)
    if args.workers:
        validation.name("pool", args.pool)
    if args.name is not None:
        validation.text("--name", args.name)
    validation.local_dir_target("--state-dir", args.state_dir)
    embedded.up(args.state_dir, redis_port=args.redis_port, s3_port=args.s3_port, workspace_name=args.name,
                listen=args.listen, insecure=args.insecure, controller=not args.no_controller, ui=not args.no_ui)
    if args.workers:
        started = embedded.start_workers(args.state_dir, args.pool, args.workers)
        print(f"  nodes        {', '.join(started) or '(already running)'} serving pool {args.pool}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    embedded.down(args.state_dir or find_state_dir())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    settings = Settings.discover(args.config)
    state_dir = Path(settings.source).parent if settings.source.endswith("config.json") else None
    rows = embedded.status(settings, state_dir)
    print(f"workspace {settings.workspace_name}  ({settings.source})")
    width = max(len(r.name) for r in rows)
    for r in rows:
        mark = "ok  " if r.healthy else "DOWN"
        print(f"  {mark} {r.name:<{width}}  {r.endpoint}  {r.detail}")
    down = [r.name for r in rows if not r.healthy]
    if down:
        print(f"down: {', '.join(down)}" + ("  -- `cluster up` restarts only what is down, on the same ports, with "
                                            "the same credentials and data" if state_dir is not None else ""))
    return 0 if not down else 3


def cmd_mnist(args: argparse.Namespace) -> int:
    from cluster.mnist import fetch_mnist

    paths = fetch_mnist(args.dest, source=args.source, show_progress=not args.quiet)
    for p in paths:
        print(p)
    return 0


def cmd_upload(args: argparse.Namespace) -> int:
    ds = Workspace.from_config().get_default_datastore()
    ds.upload(args.src_dir, target_path=args.target_path, overwrite=args.overwrite, show_progress=True)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    for key in Workspace.from_config().get_default_datastore().list(args.prefix):
        print(key)
    return 0
