"""The dashboard in a real browser (Debian's Chromium, driven by Playwright), against the session's real
embedded cluster and real nodes. Every test fails on a browser console error (see the ``page`` fixture) and
saves a screenshot of what it looked at under artifacts/ui/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cluster import Estimator, Experiment, Workspace
from cluster.sweep import BanditPolicy, GridParameterSampling, HyperDriveConfig, PrimaryMetricGoal, choice
from tests.helpers import unique
from tests.ui.support import poll, submit, wait_status

pytestmark = pytest.mark.integration

LIVE = """
import argparse, time
from cluster import Run
p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=30)
p.add_argument("--sleep", type=float, default=0.4)
p.add_argument("--rate", type=float, default=0.2)
args = p.parse_args()
run = Run.get_context()
run.log("rate", args.rate)
acc = 0.5
for i in range(args.steps):
    acc += (1 - acc) * args.rate
    run.log("accuracy", acc)
    print(f"step {i} accuracy {acc:.4f}", flush=True)
    time.sleep(args.sleep)
run.log_row("final", steps=args.steps, accuracy=acc)
"""

SLEEPER = """
import time
print("waiting to be canceled", flush=True)
for _ in range(1200):
    time.sleep(0.1)
"""


def log_lines(page: Any) -> int:
    return int(page.page.locator("#log > span").count())


def chart_points(page: Any, name: str) -> int:
    loc = page.page.locator(f'#metric-charts .chart[data-metric="{name}"]')
    return int(loc.get_attribute("data-points") or 0) if loc.count() else 0


def test_run_page_shows_the_log_and_the_chart_growing_live(ws: Workspace, pool: str, node: Any, page: Any,
                                                           make_source: Callable[..., Path]) -> None:
    run = submit(ws, pool, make_source(LIVE), arguments=["--steps", "40", "--sleep", "0.5"], tags={"case": "live"})
    wait_status(run, {"Running"})
    page.goto(f"/runs/{run.id}")
    first = poll(lambda: log_lines(page) if log_lines(page) >= 3 else 0, what="the first log lines")
    points = poll(lambda: chart_points(page, "accuracy"), what="the accuracy chart")
    assert run.get_status() == "Running"  # all of this was seen while it ran
    poll(lambda: log_lines(page) > first, what="new log lines to arrive")
    poll(lambda: chart_points(page, "accuracy") > points, what="the chart to gain points")
    page.screenshot("run-live")
    poll(lambda: page.page.locator("#run-status .badge").inner_text() == "Completed", timeout=90,
         what="the page to show Completed")
    poll(lambda: page.page.locator("#log-state").inner_text() == "complete", what="the log to be complete")
    expected = [line for _id, line in run.stream_log()]
    shown = page.page.locator("#log").inner_text().splitlines()
    assert shown == expected  # every line once, in order
    assert chart_points(page, "accuracy") == 40
    assert page.page.locator('#metric-values tr[data-metric="rate"] td').inner_text() == "0.2"
    assert page.page.locator('#metric-rows [data-metric="final"] tbody tr').count() == 1
    poll(lambda: page.page.locator("#files").count(), what="the files panel after the run ended")
    assert page.page.locator("#timeline tbody tr").count() == 5  # Queued .. Completed, each with its time
    assert page.page.locator("#cancel").is_hidden()
    page.page.locator('#files a.preview[data-src*="logs/driver.log"]').click()  # text preview
    poll(lambda: "step 39 accuracy" in page.page.locator("#preview pre").inner_text(), what="the log preview")
    page.screenshot("run-completed")


def test_runs_table_sorts_by_a_metric(ws: Workspace, pool: str, node: Any, page: Any,
                                      make_source: Callable[..., Path]) -> None:
    exp = unique("uisort")
    src = make_source(LIVE)
    rates = [0.05, 0.3, 0.15]
    for rate in rates:
        submit(ws, pool, src, arguments=["--steps", "2", "--sleep", "0", "--rate", rate], experiment=exp)
    for run in Experiment(ws, exp).get_runs():
        run.wait_for_completion(timeout=120)
    page.goto(f"/experiments/{exp}")
    page.page.locator('a.sort[data-sort="metric:rate"]').click()
    page.page.wait_for_url("**sort=metric%3Arate**")
    cells = page.page.locator('#runs td.metric[data-metric="rate"]').all_inner_texts()
    assert [float(c) for c in cells] == sorted(rates, reverse=True)
    page.page.locator('a.sort[data-sort="metric:rate"]').click()  # again: ascending
    page.page.wait_for_url("**order=asc**")
    cells = page.page.locator('#runs td.metric[data-metric="rate"]').all_inner_texts()
    assert [float(c) for c in cells] == sorted(rates)
    page.screenshot("experiment-sorted")
    page.goto("/")
    assert page.page.locator(f'#experiments a[href="/experiments/{exp}"]').count() == 1
    page.screenshot("experiments")


def test_sweep_page_shows_every_child_and_the_best(ws: Workspace, pool: str, node: Any, page: Any,
                                                   make_source: Callable[..., Path]) -> None:
    est = Estimator(source_directory=str(make_source(LIVE)), entry_script="train.py", compute_target=pool,
                    script_params={"--sleep": 0.05})
    sampling = GridParameterSampling({"--rate": choice(0.1, 0.4, 0.2), "--steps": choice(3, 4)})
    hd = HyperDriveConfig(estimator=est, hyperparameter_sampling=sampling, policy=BanditPolicy(slack_factor=0.5),
                          primary_metric_name="accuracy", primary_metric_goal=PrimaryMetricGoal.MAXIMIZE,
                          max_total_runs=6, max_concurrent_runs=2)
    sweep = Experiment(ws, unique("uisweep")).submit(hd)
    page.goto(f"/sweeps/{sweep.id}")
    assert page.page.locator("#children").count() == 1
    sweep.wait_for_completion(timeout=300)
    children = sweep.get_children()
    # the panel refreshes itself while the sweep runs; after it ends it shows every child
    poll(lambda: page.page.locator("#children tbody tr[data-run]").count() == len(children), timeout=30,
         what="every child in the table")
    shown = sorted(page.page.locator("#children tbody tr[data-run]").evaluate_all(
        "rows => rows.map(r => r.dataset.run)"))
    assert shown == sorted(c.id for c in children) and len(children) == 6
    best = sweep.get_best_run_by_primary_metric()
    assert best is not None
    assert page.page.locator("#children tr.best").get_attribute("data-run") == best.id
    assert page.page.locator(f'#sweep-scatter .chart[data-param="--rate"] circle.best[data-run="{best.id}"]').count()
    assert page.page.locator("#sweep-parallel polyline").count() == page.page.locator(
        "#sweep-scatter .chart").first.locator("circle").count()
    # sorted by the primary metric, best first
    values = [float(v) for v in page.page.locator("#children td.metric").all_inner_texts() if v != "-"]
    assert values == sorted(values, reverse=True)
    page.screenshot("sweep")
    page.goto(f"/experiments/{sweep.experiment.name}")
    assert page.page.locator("#runs tr.child").count() == 6  # children grouped under their parent
    page.screenshot("experiment-with-sweep")


def test_cancel_button_cancels_the_run(ws: Workspace, pool: str, node: Any, page: Any,
                                       make_source: Callable[..., Path]) -> None:
    run = submit(ws, pool, make_source(SLEEPER))
    wait_status(run, {"Running"})
    page.goto(f"/runs/{run.id}")
    poll(lambda: "waiting to be canceled" in page.page.locator("#log").inner_text(), what="the log line")
    page.page.once("dialog", lambda d: d.accept())
    page.page.locator("#cancel").click()
    poll(lambda: page.page.locator("#run-status .badge").inner_text() == "Canceled", timeout=60,
         what="the page to show Canceled")
    assert run.get_status() == "Canceled"
    page.screenshot("run-canceled")


def test_models_and_pools_pages(ws: Workspace, pool: str, node: Any, page: Any,
                                make_source: Callable[..., Path]) -> None:
    src = make_source({"train.py": "import os\nos.makedirs('outputs', exist_ok=True)\n"
                                   "open('outputs/model.pkl', 'wb').write(b'model')\n"})
    run = submit(ws, pool, src)
    run.wait_for_completion(timeout=120)
    name = unique("uimodel")
    run.register_model(model_name=name, model_path="outputs/model.pkl", tags={"stage": "demo"})
    page.goto("/models")
    row = page.page.locator(f'#models tr[id="{name}-1"]')
    assert row.locator(f'a[href="/runs/{run.id}"]').count() == 1 and "stage=demo" in row.inner_text()
    page.screenshot("models")
    page.goto(f"/runs/{run.id}")
    assert page.page.locator(f'#run-models a[href="/models#{name}"]').count() == 1
    page.goto("/pools")
    assert page.page.locator(f'section.pool[data-pool="{pool}"] tr[data-node="{node.name}"]').count() == 1
    page.screenshot("pools")
    page.goto("/docs")
    assert page.page.locator("#api tbody tr").count() >= 12
    page.screenshot("api")


def test_without_the_token_the_browser_gets_401(browser: Any, dashboard: Any) -> None:
    context = browser.new_context()
    try:
        pg = context.new_page()
        resp = pg.goto(dashboard.base + "/")
        assert resp is not None and resp.status == 401 and "sign in" in pg.content()
        resp = pg.goto(dashboard.base + "/?token=wrong")
        assert resp is not None and resp.status == 401
    finally:
        context.close()


def test_pool_page_shows_nodes_scaling_up_and_down(ws: Workspace, page: Any,
                                                   make_source: Callable[..., Path]) -> None:
    from cluster import ComputeTarget, NodePool

    name = unique("uipool")
    target = ComputeTarget.create(ws, name, NodePool.provisioning_configuration(
        vm_size="small", min_nodes=0, max_nodes=1, idle_seconds_before_scaledown=1))
    try:
        page.goto("/pools")
        section = page.page.locator(f'section.pool[data-pool="{name}"]')
        poll(lambda: section.count() == 1, what="the new pool on the page")
        run = submit(ws, name, make_source("import time\nprint('on an autoscaled node')\ntime.sleep(2)\n"))
        # the page refreshes itself: the node the controller started appears with the run it is doing
        poll(lambda: section.locator(f'a[href="/runs/{run.id}"]').count() == 1, timeout=120,
             what="the autoscaled node busy with the run")
        page.screenshot("pools-scaled-up")
        run.wait_for_completion(timeout=120)
        # ... and once it idled past the timeout, the drain, and the node gone
        poll(lambda: section.locator("table.events tbody tr").count() >= 2 and
             section.locator("tr[data-node]").count() == 0, timeout=120, what="the scale-down")
        reasons = section.locator("table.events tbody").text_content() or ""  # inside a closed <details>
        assert "start 1" in reasons and "drain" in reasons, reasons
        assert section.locator(".pool-chart .uplot").count() == 1  # the nodes-over-time chart
        page.screenshot("pools-scaled-down")
    finally:
        target.delete()


MODES = """
import argparse, time
from cluster import Run
p = argparse.ArgumentParser()
p.add_argument("--mode", default="good")
args = p.parse_args()
run = Run.get_context()
if args.mode == "lag":  # a bad value, slowly: the bandit policy stops it
    for _ in range(60):
        run.log("score", 0.1)
        time.sleep(0.5)
else:
    for _ in range(10):
        run.log("score", 1.0)
        time.sleep(0.1)
"""


def test_sweep_page_marks_a_child_stopped_early_with_the_policys_reason(ws: Workspace, pool: str, node: Any,
                                                                        page: Any,
                                                                        make_source: Callable[..., Path]) -> None:
    est = Estimator(source_directory=str(make_source(MODES)), entry_script="train.py", compute_target=pool)
    hd = HyperDriveConfig(estimator=est, hyperparameter_sampling=GridParameterSampling({"--mode": choice("good",
                                                                                                         "lag")}),
                          policy=BanditPolicy(evaluation_interval=1, slack_factor=0.2), primary_metric_name="score",
                          primary_metric_goal=PrimaryMetricGoal.MAXIMIZE, max_total_runs=2, max_concurrent_runs=2)
    sweep = Experiment(ws, unique("uistop")).submit(hd)
    sweep.wait_for_completion(timeout=180)
    lag = next(r for r in sweep.get_children_sorted_by_primary_metric() if r["hyperparameters"]["--mode"] == "lag")
    assert lag["status"] == "Canceled" and lag["stopped_by"]["by"] == "BanditPolicy"
    page.goto(f"/sweeps/{sweep.id}")
    row = page.page.locator(f'#children tr[data-run="{lag["run_id"]}"]')
    assert "stopped" in (row.get_attribute("class") or "")
    note = row.locator("td").last.inner_text()
    assert "stopped by BanditPolicy" in note and lag["stopped_by"]["reason"] in note
    assert page.page.locator("#progress").inner_text().count("Stopped early\t1") == 1
    assert page.page.locator(f'#sweep-scatter circle.stopped[data-run="{lag["run_id"]}"]').count() == 1
    page.screenshot("sweep-stopped")


def test_run_page_shows_a_logged_table_and_keeps_child_runs_apart(ws: Workspace, pool: str, node: Any, page: Any,
                                                                  make_source: Callable[..., Path]) -> None:
    src = make_source({"train.py": """
from cluster import Run
run = Run.get_context()
run.log_table("curve", {"epoch": [1, 2, 3], "loss": [0.5, 0.3, 0.2]})
with run.child_run("fold-1") as child:
    child.log("fold_only", 1.0)
run.log("rate", 0.2)
"""})
    run = submit(ws, pool, src)
    run.wait_for_completion(timeout=120)
    page.goto(f"/runs/{run.id}")
    poll(lambda: page.page.locator('#metric-rows [data-metric="curve"] tbody tr').count() == 3,
         what="the table, one row per entry")
    assert page.page.locator('#metric-values tr[data-metric="rate"] td').inner_text() == "0.2"
    for name in ("fold_only", "status", "child"):  # a child's metric and control events are not the run's
        assert page.page.locator(f'[data-metric="{name}"]').count() == 0
