"""The controller's Prometheus metrics on the session's embedded cluster, read over HTTP as Prometheus would:
a small sweep, a failing run, a lost node and a canceled run must show up with the right values; and a
controller with autoscaling off for a pool (KEDA's mode) starts no node but still supervises lost ones."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cluster import ComputeTarget, Estimator, Experiment, NodePool, Run, Workspace, embedded
from cluster.cli import main
from cluster.compute import CONTROLLER_LEADER, rk_pool_status
from cluster.records import RunStatus
from cluster.settings import Settings
from cluster.sweep import GridParameterSampling, HyperDriveConfig, choice
from tests.helpers import unique, wait_until
from tests.integration.conftest import NodeStarter

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]

TRAIN = """
import argparse, sys, time
from cluster import Run
p = argparse.ArgumentParser()
p.add_argument("--a", type=float, default=1.0)
p.add_argument("--sleep", type=float, default=1.0)
p.add_argument("--fail", type=int, default=0)
args = p.parse_args()
time.sleep(args.sleep)
if args.fail:
    sys.exit(3)
Run.get_context().log("score", args.a)
"""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not exposed"
    return samples[key]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of every sample of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def ws(settings: Settings) -> Workspace:
    return Workspace(settings)


@pytest.fixture(scope="module")
def url(settings: Settings) -> str:
    assert settings.metrics_port, "`cluster up` must choose a metrics port and write it to config.json"
    return embedded.metrics_url(settings)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("telemetry-src")
    (src / "train.py").write_text(TRAIN)
    return src


@pytest.fixture
def make_pool(ws: Workspace) -> Iterator[Any]:
    created: list[NodePool] = []

    def make(**kw: Any) -> NodePool:
        cfg = NodePool.provisioning_configuration(**{"vm_size": "small", "min_nodes": 0, "max_nodes": 2,
                                                     "idle_seconds_before_scaledown": 60, **kw})
        pool = ComputeTarget.create(ws, unique("tm"), cfg)
        created.append(pool)
        return pool

    yield make
    for pool in created:
        pool.delete()
    for pool in created:
        wait_until(lambda p=pool: p.name not in ws.compute_targets, 90, f"pool {pool.name} deleted")


def submit(ws: Workspace, source: Path, pool: str, **params: Any) -> Run:
    est = Estimator(source_directory=source, entry_script="train.py", script_params=params, compute_target=pool)
    return Experiment(ws, "telemetry").submit(est)


def status_of(ws: Workspace, run: Run) -> RunStatus:
    return ws.runs.status(run.id)


def kill_tree(pid: int) -> None:
    """Lose the machine: SIGKILL the node and everything under it."""
    proc = psutil.Process(pid)
    victims = [proc, *proc.children(recursive=True)]
    for v in victims:
        with contextlib.suppress(psutil.NoSuchProcess):
            v.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=10)


def test_status_prints_and_checks_the_metrics_url(cluster_dir: Path, url: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--config", str(cluster_dir / "config.json")]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if " metrics " in x)
    assert line.split()[0] == "ok" and url in line and "series" in line
    samples = scrape(url)
    assert value(samples, "cluster_metrics_state_ok") == 1
    assert value(samples, "cluster_controller_leader") == 1
    lines: list[str] = []
    embedded.up(cluster_dir, echo=lines.append)  # already running: it prints the endpoints again
    assert f"  metrics      {url}" in lines


def test_metrics_after_a_sweep_a_failure_a_lost_node_and_a_cancel(ws: Workspace, url: str, source: Path,
                                                                  cluster_dir: Path, make_pool: Any) -> None:
    pool = make_pool(max_nodes=2).name
    before = scrape(url)
    ticks_before = value(before, "cluster_controller_tick_duration_seconds_count")

    # a sweep of three children, two at a time; it is visible while it runs
    hd = HyperDriveConfig(estimator=Estimator(source_directory=source, entry_script="train.py",
                                              script_params={"--sleep": 3}, compute_target=pool),
                          hyperparameter_sampling=GridParameterSampling({"--a": choice(1, 2, 3)}),
                          primary_metric_name="score", primary_metric_goal="maximize", max_total_runs=3,
                          max_concurrent_runs=2)
    sweep = Experiment(ws, unique("tm-sweep")).submit(hd)

    def running() -> Samples | None:
        s = scrape(url)  # the run gauges are read live, the node gauges as the controller last published them
        ok = (total(s, "cluster_sweep_children", sweep=sweep.id, status="running") >= 1
              and value(s, "cluster_runs", pool=pool, status="running") >= 1
              and value(s, "cluster_pool_nodes", pool=pool, state="busy") >= 1
              and value(s, "cluster_pool_desired_nodes", pool=pool) >= 1)
        return s if ok else None

    seen = wait_until(running, 90, "the sweep's children running on busy nodes, in the metrics")
    assert value(seen, "cluster_pool_node_bounds", pool=pool, bound="max_nodes") == 2
    assert value(seen, "cluster_pool_autoscaled", pool=pool) == 1
    assert total(seen, "cluster_sweep_children", sweep=sweep.id, status="running") <= 2  # max_concurrent_runs
    sweep.wait_for_completion(timeout=180)

    # a failing run, and a run whose node is killed while it runs (retried elsewhere)
    failing = submit(ws, source, pool, **{"--sleep": 0.5, "--fail": 1})
    lost = submit(ws, source, pool, **{"--sleep": 4})
    wait_until(lambda: status_of(ws, lost) is RunStatus.RUNNING, 90, "the run to lose running")
    node = ws.runs.record(lost.id).node
    mp = next(p for p in embedded.State.load(cluster_dir).processes if p.name == node)
    kill_tree(mp.pid)
    embedded.reap(mp.pid, timeout=10)
    failing.wait_for_completion(timeout=120, raise_on_error=False)
    assert status_of(ws, failing) is RunStatus.FAILED
    lost.wait_for_completion(timeout=180)
    record = ws.runs.record(lost.id)
    assert [a.get("outcome") for a in record.attempts] == ["node-lost", "Completed"]

    # a run queued on a pool nobody serves (no compute target, no node), then canceled: it is counted
    # there, and its queue shows in cluster_runs although the pool has no definition (KEDA scales from 0)
    orphan = unique("tm-orphan")
    queued = submit(ws, source, orphan)
    wait_until(lambda: value(scrape(url), "cluster_runs", pool=orphan, status="queued") == 1, 30,
               "the orphan pool's queued run in the metrics")
    queued.cancel()

    def settled() -> Samples | None:
        s = scrape(url)
        done = (value(s, "cluster_runs_finished_total", pool=pool, status="completed") == 4
                and value(s, "cluster_runs_finished_total", pool=pool, status="failed") == 1
                and value(s, "cluster_runs_finished_total", pool=orphan, status="canceled") == 1
                and value(s, "cluster_node_lost_total", pool=pool) == 1
                # the node gauges are what the controller published at its last tick: they follow shortly
                and value(s, "cluster_pool_nodes", pool=pool, state="busy") == 0
                and value(s, "cluster_pool_nodes", pool=pool, state="idle") >= 1
                and value(s, "cluster_pool_desired_nodes", pool=pool) == 0)
        return s if done else None

    after = wait_until(settled, 60, "finished runs and the lost node counted, the nodes idle")
    # attempts: four completed (three children, the retried run), one failed, one lost with its node
    assert value(after, "cluster_run_attempts_total", pool=pool, outcome="completed") == 4
    assert value(after, "cluster_run_attempts_total", pool=pool, outcome="failed") == 1
    assert value(after, "cluster_run_attempts_total", pool=pool, outcome="node-lost") == 1
    assert value(after, "cluster_run_attempts_total", pool=pool, outcome="canceled") == 0
    assert value(after, "cluster_runs_finished_total", pool=pool, status="canceled") == 0
    assert total(after, "cluster_run_attempts_total", pool=orphan) == 0  # it never started
    # phase durations: one observation per finished run and phase, plausible sums
    for phase in ("queue_wait", "preparing", "running", "finalizing"):
        assert value(after, "cluster_run_duration_seconds_count", pool=pool, phase=phase) == 5, phase
        assert value(after, "cluster_run_duration_seconds_bucket", pool=pool, phase=phase, le="+Inf") == 5
    running_sum = value(after, "cluster_run_duration_seconds_sum", pool=pool, phase="running")
    assert 3 * 3 + 0.5 + 4 <= running_sum < 600  # the scripts' sleeps, at least
    assert value(after, "cluster_run_duration_seconds_sum", pool=pool, phase="queue_wait") > 0
    assert value(after, "cluster_run_duration_seconds_count", pool=orphan, phase="queue_wait") == 0
    # nothing waits or runs any more; the sweep's series are gone with it
    for status in ("queued", "preparing", "running", "finalizing"):
        assert value(after, "cluster_runs", pool=pool, status=status) == 0
    assert total(after, "cluster_sweep_children", sweep=sweep.id) == 0
    # the controller's own health
    assert value(after, "cluster_controller_tick_duration_seconds_count") > ticks_before
    assert time.time() - value(after, "cluster_controller_last_tick_timestamp_seconds") < 30
    assert value(after, "cluster_controller_tick_errors_total") >= 0
    assert value(after, "cluster_metrics_state_ok") == 1


# ---- autoscaling off (an external scaler such as KEDA sizes the pool) ----------------------------------

@pytest.fixture
def manual_controller(ws: Workspace, cluster_dir: Path) -> Iterator[Any]:
    """Replace the session's controller by one started with ``--no-autoscale-pool POOL``; put the usual
    one back afterwards."""
    started: list[int] = []

    def swap(*extra: str) -> None:
        for mp in embedded.State.load(cluster_dir).processes:
            if mp.name == "controller" and mp.alive:
                os.kill(mp.pid, signal.SIGTERM)
                wait_until(lambda m=mp: not m.alive, 30, "controller stopped")
                embedded.reap(mp.pid, timeout=10)
        ws.redis.delete(CONTROLLER_LEADER)
        assert embedded.ensure_controller(cluster_dir, extra_args=extra)
        ctl = embedded.running_process(cluster_dir, "controller")
        assert ctl is not None
        started.append(ctl.pid)
        wait_until(lambda: ws.redis.get(CONTROLLER_LEADER), 30, "the new controller leading")

    try:
        yield swap
    finally:
        swap()


def test_no_autoscale_starts_no_node_but_still_supervises(ws: Workspace, url: str, source: Path,
                                                          cluster_dir: Path, make_pool: Any,
                                                          manual_controller: Any, nodes: NodeStarter) -> None:
    pool = make_pool(max_nodes=2).name
    manual_controller("--no-autoscale-pool", pool)
    run = submit(ws, source, pool, **{"--sleep": 4})

    def published() -> dict[str, Any]:
        raw = ws.redis.get(rk_pool_status(pool))
        return json.loads(raw) if raw else {}

    first = wait_until(lambda: (p := published()) and p["queuedRuns"] == 1 and p, 30, "the queued run observed")
    assert "autoscaling is off" in first["decision"]["reason"] and first["targetNodeCount"] == 1
    # several ticks later, still no node was started for it
    wait_until(lambda: published().get("updated", 0) > first["updated"] + 2.0, 30, "more ticks")
    assert first["decision"]["start"] == 0 and published()["decision"]["start"] == 0
    assert not [p for p in embedded.State.load(cluster_dir).processes if p.name.startswith(f"node-{pool}-")]
    assert status_of(ws, run) is RunStatus.QUEUED
    samples = scrape(url)
    assert value(samples, "cluster_pool_autoscaled", pool=pool) == 0
    assert value(samples, "cluster_pool_desired_nodes", pool=pool) == 1
    assert value(samples, "cluster_runs", pool=pool, status="queued") == 1  # what KEDA's query reads

    # the external scaler adds a node: it takes the run; losing it mid-run is still detected and retried
    first_node = nodes.start(pool)
    wait_until(lambda: status_of(ws, run) is RunStatus.RUNNING, 90, "the run running on the added node")
    first_node.remember_descendants()
    kill_tree(first_node.proc.pid)
    first_node.proc.wait(10)
    nodes.start(pool)  # the scaler's replacement
    run.wait_for_completion(timeout=180)
    record = ws.runs.record(run.id)
    assert [a.get("outcome") for a in record.attempts] == ["node-lost", "Completed"]
    assert record.attempts[0]["node"] == first_node.name
    after = wait_until(lambda: (s := scrape(url)) and value(s, "cluster_node_lost_total", pool=pool) == 1
                       and value(s, "cluster_runs_finished_total", pool=pool, status="completed") == 1 and s,
                       30, "the lost node and the finished run counted")
    assert value(after, "cluster_run_attempts_total", pool=pool, outcome="node-lost") == 1
    assert value(after, "cluster_run_attempts_total", pool=pool, outcome="completed") == 1
    assert all(not e.get("start") for e in ws.compute_targets[pool].events())  # it never started a node
    assert not [p for p in embedded.State.load(cluster_dir).processes if p.name.startswith(f"node-{pool}-")]


def test_counting_starts_where_a_process_starts_leading(ws: Workspace) -> None:
    """Transitions before the process started, or while it was a standby, are not counted by it (the leader
    of that time counted them); everything after is, once."""
    from dataclasses import replace

    from prometheus_client import CollectorRegistry

    from cluster.records import RunRecord
    from cluster.runstate import note_transition
    from cluster.telemetry import Telemetry

    pool = unique("tm-stream")
    record = RunRecord(run_id="r", experiment="e", status=RunStatus.COMPLETED, prefix="p/", pool=pool)

    def completed() -> float | None:
        return reg.get_sample_value("cluster_runs_finished_total", {"pool": pool, "status": "completed"})

    note_transition(ws.redis, record, outcome="completed")  # before the process started
    reg = CollectorRegistry()
    telemetry = Telemetry(ws, registry=reg)
    note_transition(ws.redis, record, outcome="completed")
    note_transition(ws.redis, replace(record, status=RunStatus.QUEUED), outcome="node-lost")
    telemetry.after_tick(0.01, ok=True)
    assert completed() == 1
    assert reg.get_sample_value("cluster_run_attempts_total", {"pool": pool, "outcome": "node-lost"}) == 1
    telemetry.after_tick(0.01, ok=True)  # nothing new: nothing counted twice
    assert completed() == 1
    telemetry.standby()  # another controller leads ...
    note_transition(ws.redis, record, outcome="completed")  # ... and counts this one
    telemetry.after_tick(0.01, ok=True)  # leading again: from the stream's end
    note_transition(ws.redis, record, outcome="completed")
    telemetry.after_tick(0.01, ok=True)
    assert completed() == 2
    assert reg.get_sample_value("cluster_controller_tick_duration_seconds_count") == 4


# ---- a real Prometheus (Debian's `prometheus` package) ---------------------------------------------

@pytest.fixture
def prometheus(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """A real Prometheus scraping the session controller every second with deploy/prometheus/prometheus.yml
    (only the target and the interval changed); yields its base URL."""
    import shutil
    import subprocess

    from tests.conftest import skip_or_fail

    binary = shutil.which("prometheus")
    if binary is None:
        skip_or_fail("no `prometheus` binary (Debian package `prometheus`)")
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(REPO / "deploy" / "prometheus" / "alerts.yml")]
    [job] = config["scrape_configs"]
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{settings.metrics_port}"]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = embedded.free_port()
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen([str(binary), f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: proc.poll() is None and query(base, f'up{{job="{job["job_name"]}"}}') == [1.0], 60,
                   "Prometheus scraping the controller")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


def query(base: str, expr: str) -> list[float] | None:
    """An instant query's values (None while Prometheus is not answering); a bad expression fails the test."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as e:
        if e.code == 503:  # still starting
            return None
        pytest.fail(f"Prometheus rejected {expr!r}: {e.read().decode(errors='replace')}")
    except OSError:
        return None
    assert body["status"] == "success", body
    return [float(r["value"][1]) for r in body["data"]["result"]]


def test_prometheus_scrapes_the_controller_and_answers_the_dashboard_and_keda(
        prometheus: str, ws: Workspace, source: Path, make_pool: Any) -> None:
    pool = make_pool(max_nodes=1).name
    runs = [submit(ws, source, pool, **{"--sleep": 0.5}) for _ in range(2)]
    for run in runs:
        run.wait_for_completion(timeout=120)
    wait_until(lambda: query(prometheus, f'sum(cluster_runs_finished_total{{pool="{pool}",status="completed"}})')
               == [2.0], 60, "Prometheus has the finished runs")
    # rate() and histogram_quantile() need an increase Prometheus saw between two scrapes: runs can finish before
    # their series are first scraped, so one more run now that the series exist
    submit(ws, source, pool, **{"--sleep": 0.5}).wait_for_completion(timeout=120)
    wait_until(lambda: query(prometheus, f'sum(cluster_runs_finished_total{{pool="{pool}",status="completed"}})')
               == [3.0], 60, "Prometheus has the third finished run")
    # every panel's query is valid PromQL and answers; the pool variable set to this pool
    dashboard = json.loads((REPO / "deploy" / "grafana" / "dashboards" / "cluster.json").read_text())
    answers = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"].replace("$pool", pool)
            answers[(panel["title"], target["legendFormat"])] = query(prometheus, expr)
    assert all(v is not None for v in answers.values())
    assert answers[("Queued runs", "queued")] == [0.0]
    assert answers[("Nodes", "nodes")] == [1.0]  # the node stays (idle) for the pool's idle timeout
    assert answers[("Desired vs. actual nodes", "{{pool}} max")] == [1.0]
    # a rate needs two samples of the counter in its window: poll until Prometheus has scraped them
    wait_until(lambda: query(prometheus, dashboard_expr(dashboard, "Finished runs per minute", pool)), 60,
               "a rate of finished runs")
    assert answers[("Controller: seconds since last tick", "age")][0] < 30  # type: ignore[index]
    wait_until(lambda: (v := query(prometheus, dashboard_expr(dashboard, "Run time (p50 / p95)", pool)))
               and v[0] > 0.4, 60, "a run-time quantile from the histogram")
    # the alerting rules load and evaluate against the real series
    def rules() -> list[dict[str, Any]] | None:
        with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=10) as resp:
            groups = json.load(resp)["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        return loaded if loaded and all(r.get("lastEvaluation", "").startswith("2") for r in loaded) else None

    loaded = wait_until(rules, 30, "the alerting rules evaluated")
    assert len(loaded) == 5 and all(r["health"] == "ok" for r in loaded), loaded
    assert not [r for r in loaded if r["name"] == "ClusterControllerNotTicking" and r["state"] != "inactive"]
    # KEDA's query, for this pool: the live runs (none left)
    so = yaml.safe_load((REPO / "deploy" / "kubernetes" / "keda" / "scaledobject.yaml").read_text())
    keda = so["spec"]["triggers"][0]["metadata"]["query"].replace('pool="keda"', f'pool="{pool}"')
    assert query(prometheus, keda) == [0.0]


def dashboard_expr(dashboard: dict[str, Any], title: str, pool: str) -> str:
    panel = next(p for p in dashboard["panels"] if p["title"] == title)
    return str(panel["targets"][0]["expr"]).replace("$pool", pool)
