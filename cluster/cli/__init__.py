"""The `cluster` command: a thin layer over the SDK.

``main(argv)`` is callable from tests and returns the exit code. A :class:`ClusterError` is printed as its
message (no traceback) and exits with the error's ``exit_code``; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from cluster.cli.output import configure_logging
from cluster.errors import ClusterError

from . import hosts, infra, pools, runs, sweep, ui

GROUPS = [infra, runs, pools, sweep, ui, hosts]


class _Parser(argparse.ArgumentParser):
    """A command-line mistake is one line plus a hint, like every other error (exit 2, as a UsageError)."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message}\n  -> see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="cluster",
        description="A self-hosted training cluster: submit scripts and sweeps to autoscaled Celery nodes, "
        "with every result kept in object storage.",
        epilog="Start with `cluster up`, then see the README for the tutorial flow.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()  # the library logs (controller, sweeps, nodes); a command shows it on stderr
    try:
        return int(args.func(args) or 0)
    except ClusterError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  -> {e.hint}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # piped into `head` and the reader left: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
