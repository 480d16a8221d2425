"""The CLI's one table printer and its handler for the library's loggers."""

from __future__ import annotations

import io
import logging

import pytest

from cluster.cli.output import configure_logging, table


def test_table_aligns_columns_under_the_header() -> None:
    out = io.StringIO()
    table([["a-long-name", 1], ["b", 22]], ["NAME", "N"], file=out)
    assert out.getvalue().splitlines() == ["NAME         N", "a-long-name  1", "b            22"]


def test_library_logs_reach_the_current_stderr_once(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging()
    configure_logging()  # main() may run many times in one process: still one handler
    logging.getLogger("cluster.output_probe").info("controller: re-queued 2 run(s) from the object store")
    logging.getLogger("tasks.output_probe").warning("node: outage; the message goes back to the queue")
    err = capsys.readouterr().err
    assert err.count("re-queued 2 run(s)") == 1 and "goes back to the queue" in err
