"""The dashboard's run index against the real object store: a listing reads each finished run once, ever;
later listings (and a restarted dashboard) read only the index, and new runs join it."""

from __future__ import annotations

import pytest

from cluster import Workspace
from cluster.ui.index import index_key
from cluster.ui.views import Views
from tests.helpers import unique
from tests.ui.support import make_finished_runs

pytestmark = pytest.mark.integration


def test_finished_runs_are_read_once_then_served_from_the_index(ws: Workspace) -> None:
    exp = unique("uiindex")
    ids = make_finished_runs(ws, exp, 40)
    views = Views(ws)
    first = views.runs(exp, sort="metric:accuracy", limit=1000)
    assert first["total"] == 40 and sorted(r["run_id"] for r in first["runs"]) == sorted(ids)
    assert views.index.reads == 80  # record + metrics of each run, once
    assert ws.store.exists(index_key(exp))
    again = views.runs(exp, sort="metric:accuracy", limit=1000)
    assert again == first and views.index.reads == 80  # nothing read per run the second time

    restarted = Views(ws)  # a new dashboard process: the index comes from the object store
    assert restarted.runs(exp, sort="metric:accuracy", limit=1000) == first
    assert restarted.index.reads == 0

    more = make_finished_runs(ws, exp, 3)
    listed = restarted.runs(exp, limit=1000)
    assert listed["total"] == 43 and set(more) <= {r["run_id"] for r in listed["runs"]}
    assert restarted.index.reads == 6  # only the new ones
    accuracy = [r["metrics"]["accuracy"] for r in first["runs"]]
    assert accuracy == sorted(accuracy, reverse=True)


def test_a_damaged_index_is_rebuilt(ws: Workspace) -> None:
    exp = unique("uiindex")
    make_finished_runs(ws, exp, 5)
    ws.store.put_bytes(index_key(exp), b"{not json")
    views = Views(ws)
    assert views.runs(exp)["total"] == 5 and views.index.reads == 10
    assert Views(ws).runs(exp)["total"] == 5
