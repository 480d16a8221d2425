"""What the CLI shows: the one table printer, and the handlers for the library's ``cluster`` loggers.

Library code logs (``logging.getLogger(__name__)`` under ``cluster.`` or ``tasks.``) and never configures
logging; a command line process (``cluster ...``, which also runs the controller and the nodes) sends those
records to stderr, one message per line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from cluster.tables import format_table

LOGGERS = ("cluster", "tasks")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg, unused-ignore]
    """Writes to whatever ``sys.stderr`` is at the time (tests swap it; a handler must not keep an old one)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure_logging(level: int = logging.INFO) -> None:
    """Send the ``cluster`` and ``tasks`` loggers to stderr, once per process (``main`` may run many times)."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
            handler = _StderrHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
        logger.setLevel(level)


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], *, file: TextIO | None = None) -> None:
    """The CLI's tables (:func:`cluster.tables.format_table`)."""
    print(format_table(rows, header), file=file or sys.stdout)
