"""``Run.get_context()`` outside a node: an offline run that prints what it logs (no server needed)."""

from __future__ import annotations

import pytest

from cluster import Run
from cluster.context import OfflineRun, get_context


def test_get_context_outside_a_node_is_offline_and_prints(capsys: pytest.CaptureFixture[str]) -> None:
    ctx = get_context(environ={})
    assert isinstance(ctx, OfflineRun)
    ctx.log("regularization rate", 0.5)
    ctx.log("accuracy", 0.9)
    assert "[offline run] regularization rate: 0.5" in capsys.readouterr().err
    assert ctx.get_metrics() == {"regularization rate": 0.5, "accuracy": 0.9}
    assert isinstance(Run.get_context(), OfflineRun)  # this test process is not on a node
