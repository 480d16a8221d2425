"""Network faults between real hosts: a node's link cut mid-run, and the infra host unreachable for 20 s."""

from __future__ import annotations

import time

import pytest

from cluster import Experiment, Run
from tests.helpers import unique, wait_until
from tests.multihost.conftest import POOL, MultiHost

pytestmark = pytest.mark.multihost


def _runs(mh: MultiHost, out: dict) -> list[Run]:
    exp = Experiment(workspace=mh.ws, name=out["experiment"])
    return [Run(exp, rid) for rid in out["runs"]]


def _key(run: Run, name: str) -> str:
    """The object of a run's file: in the folder of the attempt the run committed (its result)."""
    return f"{run.files_prefix()}{name}"


def _done_token(mh: MultiHost, run: Run) -> str:
    """The token in the run's output, checked against its log: both come from the attempt that completed."""
    token = mh.ws.store.get_bytes(_key(run, "outputs/done.txt")).decode()
    log = mh.ws.store.get_bytes(_key(run, "logs/driver.log")).decode()
    assert f"token {token}" in log and f"done {token}" in log, log[-2000:]
    assert log.count("token ") == 1, log[-2000:]
    return token


def test_cut_link_moves_the_run_and_the_node_comes_back(multihost: MultiHost) -> None:
    mh = multihost
    mh.wait_nodes("n1", "n2")
    out = mh.client("submit.py", POOL, unique("cut"), "25", "1")
    (run,) = _runs(mh, out)
    wait_until(lambda: run.get_status() == "Running" and run.get_details()["host"], 90, "the run to start")
    victim = run.get_details()["host"]
    survivor = "n2" if victim == "n1" else "n1"
    wait_until(lambda: isinstance(run.get_metrics().get("tick"), list), 60, "the script to tick twice")
    mh[victim].link(up=False)  # `ip link set <its veth> down`: the host is off the network
    try:
        wait_until(lambda: run.get_details()["host"] == survivor and run.get_details()["attempt"] == 2, 90,
                   f"the run to move to {survivor}")
        details = run.wait_for_completion(timeout=120)
    finally:
        mh[victim].link(up=True)
    assert details["status"] == "Completed" and details["host"] == survivor and details["attempt"] == 2, details
    outcomes = [(a.get("host"), a.get("outcome")) for a in details["attempts"]]
    assert outcomes[0] == (victim, "node-lost"), outcomes
    token = _done_token(mh, run)
    record = mh.ws.store.stat(run.prefix + "run.json")
    # the link is back: the victim's node rejoins, and its stale attempt changes nothing
    mh.wait_nodes(victim, timeout=120)
    wait_until(lambda: mh.nodes()[victim]["state"] == "idle", 90, f"the node on {victim} to be idle again")
    assert run.get_status() == "Completed" and run.get_details()["attempt"] == 2
    assert _done_token(mh, run) == token
    assert mh.ws.store.stat(run.prefix + "run.json") == record
    # ... and it serves new runs: two at once, one per node
    out = mh.client("submit.py", POOL, unique("after-cut"), "6", "2")
    hosts = set()
    for r in _runs(mh, out):
        d = r.wait_for_completion(timeout=120)
        assert d["status"] == "Completed" and d["attempt"] == 1, d
        hosts.add(d["host"])
    assert hosts == {"n1", "n2"}


def test_infra_unreachable_for_20s_loses_nothing(multihost: MultiHost) -> None:
    mh = multihost
    mh.wait_nodes("n1", "n2")
    out = mh.client("submit.py", POOL, unique("outage"), "15", "2")
    runs = _runs(mh, out)
    wait_until(lambda: all(r.get_status() == "Running" for r in runs), 90, "both runs to start")
    mh["infra"].link(up=False)
    try:
        time.sleep(20)  # the scenario itself (an outage of 20 s), not a wait for a condition
    finally:
        mh["infra"].link(up=True)
    for r in runs:
        d = r.wait_for_completion(timeout=240)
        # at least once: a node that cannot renew its lease for a whole lease period (10 s) stops its script, so
        # an outage longer than that costs a re-run; the run is never lost, never finished twice
        assert [a.get("outcome") for a in d["attempts"]][-1] == "Completed", d["attempts"]
        assert all(a.get("outcome") == "node-lost" for a in d["attempts"][:-1]) and d["attempt"] <= 3, d["attempts"]
        assert d["status"] == "Completed", d
        assert d["host"] in ("n1", "n2")
        ticks = r.get_metrics()["tick"]
        assert ticks == list(range(15)), ticks  # the completed attempt's whole series, nothing lost or doubled
        _done_token(mh, r)
    mh.wait_nodes("n1", "n2", timeout=60)


def test_infra_unreachable_shorter_than_the_lease_costs_no_rerun(multihost: MultiHost) -> None:
    mh = multihost
    mh.wait_nodes("n1", "n2")
    out = mh.client("submit.py", POOL, unique("blip"), "12", "1")
    (run,) = _runs(mh, out)
    wait_until(lambda: isinstance(run.get_metrics().get("tick"), list), 90, "the script to tick twice")
    mh["infra"].link(up=False)
    try:
        time.sleep(4)  # the scenario: a 4 s outage, well inside the 10 s lease
    finally:
        mh["infra"].link(up=True)
    d = run.wait_for_completion(timeout=120)
    assert d["status"] == "Completed" and d["attempt"] == 1, d["attempts"]
    assert run.get_metrics()["tick"] == list(range(12))
    _done_token(mh, run)
