"""The dashboard's JSON API and its access rules, against the dashboard `cluster up` started for the session's
real embedded cluster, with real node processes running real runs."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from cluster import Experiment, Run, Workspace
from cluster.cli import main as cli_main
from cluster.sweep import GridParameterSampling, HyperDriveConfig, HyperDriveRun, PrimaryMetricGoal, choice
from cluster.ui.auth import derive
from tests.helpers import unique, wait_until
from tests.ui.support import Dashboard, submit, wait_status

pytestmark = pytest.mark.integration

TRAIN = """
import argparse, os, sys, time
from cluster import Run

p = argparse.ArgumentParser()
p.add_argument("--value", type=float, default=0.5)
p.add_argument("--lines", type=int, default=5)
p.add_argument("--sleep", type=float, default=0.0)
args = p.parse_args()
run = Run.get_context()
run.log("value", args.value)
for i in range(args.lines):
    print(f"line {i}", flush=True)
    run.log("accuracy", args.value * (i + 1) / args.lines)
    time.sleep(args.sleep)
run.log_row("summary", lines=args.lines, value=args.value)
os.makedirs("outputs", exist_ok=True)
with open("outputs/model.txt", "w") as f:
    f.write(f"value {args.value}\\n")
with open("outputs/plot.png", "wb") as f:
    f.write(b"\\x89PNG\\r\\n\\x1a\\n" + b"0" * 32)
"""

SLEEPER = """
import time
print("sleeping", flush=True)
for _ in range(600):
    time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def finished(ws: Workspace, pool: str, node: Any, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One completed run with metrics, files and a registered model."""
    src = tmp_path_factory.mktemp("src")
    (src / "train.py").write_text(TRAIN)
    run = submit(ws, pool, src, arguments=["--value", "0.8", "--lines", "30"], tags={"team": "vision"})
    run.wait_for_completion(timeout=120)
    return run


# ---- access -------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/", "/models", "/pools", "/experiments/x", "/runs/x", "/api/experiments",
                                  "/api/runs", "/api/models", "/api/pools", "/api/nodes", "/api/health",
                                  "/static/app.js", "/docs", "/openapi.json"])
def test_every_page_and_api_call_needs_the_token(dashboard: Dashboard, path: str) -> None:
    assert httpx.get(dashboard.base + path).status_code == 401
    wrong = httpx.get(dashboard.base + path, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 401
    forged = httpx.get(dashboard.base + path, cookies={"cluster_ui": "forged"})
    assert forged.status_code == 401


def test_token_in_the_url_becomes_a_cookie(dashboard: Dashboard) -> None:
    resp = httpx.get(dashboard.login_url("/models"))
    assert resp.status_code == 303
    assert resp.headers["location"] == "/models"  # the token leaves the address
    cookie = resp.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and dashboard.token not in cookie
    with httpx.Client(base_url=dashboard.base) as browser_like:
        browser_like.get(dashboard.login_url("/"))
        assert browser_like.get("/models").status_code == 200
        assert browser_like.get("/api/experiments").status_code == 200
    assert httpx.get(dashboard.base + "/?token=wrong").status_code == 401


def test_token_is_kept_private_in_the_config(cluster_dir: Path, dashboard: Dashboard) -> None:
    config = cluster_dir / "config.json"
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    data = json.loads(config.read_text())
    assert data["ui_token"] == dashboard.token and len(dashboard.token) >= 24
    assert data["ui_url"].startswith("http://127.0.0.1:")  # loopback by default


def test_status_checks_the_dashboard_with_a_real_request(cluster_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code = cli_main(["status", "--config", str(cluster_dir / "config.json")])
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if " ui " in ln)
    assert line.strip().startswith("ok") and "token accepted" in line, out
    assert code == 0, out
    assert cli_main(["ui", "--print-url", "--config", str(cluster_dir / "config.json")]) == 0
    url = capsys.readouterr().out.strip()
    assert httpx.get(url).status_code == 303


def test_cancel_is_a_post_with_a_csrf_check(ws: Workspace, dashboard: Dashboard, api: httpx.Client,
                                            make_source: Callable[..., Path]) -> None:
    lonely = unique("nobody")  # no node serves this pool: the run stays queued
    run = submit(ws, lonely, make_source(SLEEPER))
    path = f"/api/runs/{run.id}/cancel"
    assert api.get(path).status_code == 405
    with httpx.Client(base_url=dashboard.base) as browser_like:
        browser_like.get(dashboard.login_url("/"))
        assert browser_like.post(path).status_code == 403  # the cookie alone is not enough
        assert browser_like.post(path, headers={"X-CSRF-Token": "nope"}).status_code == 403
        other = browser_like.post(path, headers={"X-CSRF-Token": derive(dashboard.token, "csrf"),
                                                 "Origin": "http://evil.example"})
        assert other.status_code == 403
        assert run.get_status() == "Queued"
        ok = browser_like.post(path, headers={"X-CSRF-Token": derive(dashboard.token, "csrf")})
    assert ok.status_code == 200, ok.text
    assert ok.json()["outcome"] == "canceled" and run.get_status() == "Canceled"
    assert api.post(path).json()["outcome"] == "Canceled"  # a script with the bearer token needs no CSRF token


# ---- runs ---------------------------------------------------------------------------------------

def test_run_details_metrics_and_files_match_the_sdk(api: httpx.Client, finished: Run) -> None:
    data = api.get(f"/api/runs/{finished.id}").json()
    details = finished.get_details()
    for key in ("runId", "experiment", "status", "timestamps", "arguments", "attempts", "snapshot", "tags"):
        assert data[key] == details[key], key
    assert data["status"] == "Completed" and data["metrics"] == finished.get_metrics()
    files = api.get(f"/api/runs/{finished.id}/files").json()
    assert [f["name"] for f in files] == finished.get_file_names()
    assert {f["name"]: f["kind"] for f in files}["outputs/plot.png"] == "image"
    body = api.get(f"/api/runs/{finished.id}/files/outputs/model.txt")
    assert body.content == b"value 0.8\n" and "attachment" in body.headers["content-disposition"]
    image = api.get(f"/api/runs/{finished.id}/files/outputs/plot.png", params={"preview": 1})
    assert image.headers["content-type"] == "image/png" and image.content.startswith(b"\x89PNG")
    assert api.get(f"/api/runs/{finished.id}/files/../run.json").status_code in (400, 404)
    assert api.get(f"/api/runs/{finished.id}/files/spec.json").status_code == 400
    assert api.get(f"/api/runs/{finished.id}/files/outputs/missing.txt").status_code == 404
    assert api.get("/api/runs/no_such_run_1").status_code == 404


def test_log_pages_then_the_stream_resumes_without_loss_or_repeat(api: httpx.Client, finished: Run) -> None:
    expected = [line for _id, line in finished.stream_log()]
    assert [f"line {i}" for i in range(30)] == [ln for ln in expected if ln.startswith("line ")]
    got, after = [], "0-0"
    while True:  # pages of 7 lines
        page = api.get(f"/api/runs/{finished.id}/log", params={"after": after, "limit": 7}).json()
        got += [e["line"] for e in page["lines"]]
        after = page["next"]
        if page["complete"]:
            break
    assert got == expected
    events = read_sse(api, f"/api/runs/{finished.id}/log/stream")
    logs = [(e["id"], json.loads(e["data"])["line"]) for e in events if e["event"] == "log"]
    assert [line for _i, line in logs] == expected and events[-1]["event"] == "end"
    cut = 11  # reconnect as a browser does, with the id of the last event it saw
    rest = read_sse(api, f"/api/runs/{finished.id}/log/stream", headers={"Last-Event-ID": logs[cut][0]})
    assert [json.loads(e["data"])["line"] for e in rest if e["event"] == "log"] == expected[cut + 1:]


def test_live_stream_sends_lines_and_metrics_as_they_come(ws: Workspace, pool: str, api: httpx.Client,
                                                          make_source: Callable[..., Path]) -> None:
    run = submit(ws, pool, make_source(TRAIN), arguments=["--lines", "12", "--sleep", "0.4"])
    wait_status(run, {"Running", "Finalizing", "Completed"})
    events = read_sse(api, f"/api/runs/{run.id}/log/stream", stop_after=4)  # leave while it runs
    last_id = events[-1]["id"]
    rest = read_sse(api, f"/api/runs/{run.id}/log/stream", headers={"Last-Event-ID": last_id})
    lines = [json.loads(e["data"])["line"] for e in events + rest if e["event"] == "log"]
    assert [ln for ln in lines if ln.startswith("line ")] == [f"line {i}" for i in range(12)]
    assert lines == [line for _id, line in run.stream_log()]  # nothing lost, nothing twice
    metric = [json.loads(e["data"]) for e in events + rest if e["event"] == "metric"]
    assert [m["value"] for m in metric if m["name"] == "accuracy"] == run.get_metrics()["accuracy"]
    statuses = [json.loads(e["data"])["status"] for e in rest if e["event"] in ("status", "end")]
    assert statuses[-1] == "Completed"


def test_runs_list_filters_sorts_and_pages(ws: Workspace, pool: str, node: Any, api: httpx.Client,
                                           make_source: Callable[..., Path]) -> None:
    exp = unique("uilist")
    src = make_source(TRAIN)
    values = [0.3, 0.9, 0.1, 0.6]
    runs = [submit(ws, pool, src, arguments=["--value", v, "--lines", "1"], experiment=exp,
                   tags={"parity": "odd" if i % 2 else "even"}) for i, v in enumerate(values)]
    for run in runs:
        run.wait_for_completion(timeout=120)
    listed = api.get("/api/runs", params={"experiment": exp}).json()
    assert [r["run_id"] for r in listed["runs"]] == [r.id for r in Experiment(ws, exp).get_runs()]  # newest first
    assert listed["total"] == 4 and {"value", "accuracy"} <= set(listed["metrics"])
    by_value = api.get("/api/runs", params={"experiment": exp, "sort": "metric:value", "order": "desc"}).json()
    assert [r["metrics"]["value"] for r in by_value["runs"]] == sorted(values, reverse=True)
    page2 = api.get("/api/runs", params={"experiment": exp, "sort": "metric:value", "order": "asc", "limit": 2,
                                         "offset": 2}).json()
    assert [r["metrics"]["value"] for r in page2["runs"]] == [0.6, 0.9] and page2["total"] == 4
    odd = api.get("/api/runs", params={"experiment": exp, "tag": "parity=odd"}).json()
    assert sorted(r["metrics"]["value"] for r in odd["runs"]) == [0.6, 0.9]
    assert api.get("/api/runs", params={"experiment": exp, "tag": "parity"}).json()["total"] == 4
    assert api.get("/api/runs", params={"experiment": exp, "status": "Failed"}).json()["total"] == 0
    assert api.get("/api/runs", params={"sort": "nonsense"}).status_code == 400
    experiments = {e["name"]: e for e in api.get("/api/experiments").json()}
    assert experiments[exp]["runs"] == 4 and experiments[exp]["counts"] == {"Completed": 4}


def test_sweep_children_and_best_match_hyperdrive_run(ws: Workspace, pool: str, node: Any, api: httpx.Client,
                                                     make_source: Callable[..., Path]) -> None:
    from cluster import Estimator

    est = Estimator(source_directory=str(make_source(TRAIN)), entry_script="train.py", compute_target=pool,
                    script_params={"--lines": 2})
    hd = HyperDriveConfig(estimator=est, hyperparameter_sampling=GridParameterSampling({"--value": choice(0.2, 0.7,
                                                                                                           0.4)}),
                          primary_metric_name="accuracy", primary_metric_goal=PrimaryMetricGoal.MAXIMIZE,
                          max_total_runs=3, max_concurrent_runs=2)
    exp = Experiment(ws, unique("uisweep"))
    sweep: HyperDriveRun = exp.submit(hd)
    sweep.wait_for_completion(timeout=240)
    data = api.get(f"/api/sweeps/{sweep.id}").json()
    assert sorted(c["run_id"] for c in data["children"]) == sorted(r.id for r in sweep.get_children())
    best = sweep.get_best_run_by_primary_metric()
    assert best is not None and data["best"]["run_id"] == best.id and data["best"]["value"] == 0.7
    assert data["progress"]["sampled"] == 3 and data["progress"]["completed"] == 3
    assert data["parameters"] == ["--value"]
    rows = api.get("/api/runs", params={"experiment": exp.name, "grouped": True}).json()
    assert rows["total"] == 1 and rows["runs"][0]["kind"] == "sweep"
    parent = rows["runs"][0]  # shows its best completed child's value of the primary metric
    assert parent["metrics"]["accuracy"] == 0.7 and parent["best_of_children"] == "accuracy"
    assert sorted(c["run_id"] for c in rows["runs"][0]["children"]) == sorted(r.id for r in sweep.get_children())
    assert api.get(f"/api/sweeps/{best.id}").status_code == 400  # a child is not a sweep


def test_models_list_their_source_run(ws: Workspace, api: httpx.Client, finished: Run) -> None:
    name = unique("uimodel")
    model = finished.register_model(model_name=name, model_path="outputs/model.txt", tags={"stage": "test"})
    listed = [m for m in api.get("/api/models").json() if m["name"] == name]
    assert listed == [{**listed[0], "version": 1, "id": f"{name}:1", "run_id": finished.id, "tags": {"stage": "test"},
                       "files": model.files}]
    assert api.get(f"/api/models/{name}/1/files/model.txt").content == b"value 0.8\n"
    assert api.get(f"/api/models/{name}/1/files/other.txt").status_code == 404


def test_nodes_and_pools(api: httpx.Client, node: Any, pool: str) -> None:
    nodes = {n["name"]: n for n in api.get("/api/nodes").json()}
    assert nodes[node.name]["pool"] == pool and nodes[node.name]["state"] in ("idle", "busy")
    pools = {p["name"]: p for p in api.get("/api/pools").json()}
    assert node.name in [n["name"] for n in pools[pool]["nodes"]] and not pools[pool]["managed"]


# ---- helpers ------------------------------------------------------------------------------------

def read_sse(api: httpx.Client, path: str, *, headers: dict[str, str] | None = None,
             stop_after: int | None = None) -> list[dict[str, str]]:
    """Events of a server-sent event stream until it ends (or, with ``stop_after``, after that many log lines)."""
    events: list[dict[str, str]] = []
    current: dict[str, str] = {}
    seen = 0
    with api.stream("GET", path, headers=headers, timeout=httpx.Timeout(60, read=60)) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if not line:
                if "event" in current:
                    events.append(current)
                    seen += current["event"] == "log"
                    if current["event"] == "end" or (stop_after is not None and seen >= stop_after):
                        return events
                current = {}
                continue
            field, _, value = line.partition(":")
            if field in ("event", "id", "data"):
                current[field] = value.removeprefix(" ")
    return events


def test_pages_carry_a_strict_policy_and_files_are_sandboxed(api: httpx.Client, finished: Run) -> None:
    home = api.get("/")
    csp = home.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert home.headers["referrer-policy"] == "no-referrer" and home.headers["x-content-type-options"] == "nosniff"
    f = api.get(f"/api/runs/{finished.id}/files/outputs/plot.png", params={"preview": 1})
    assert f.headers["content-security-policy"].startswith("sandbox")  # a run's output is never active content


def test_api_reference_page_lists_every_call_offline(api: httpx.Client) -> None:
    page = api.get("/docs")
    assert page.status_code == 200
    for path in ("/api/experiments", "/api/runs", "/api/runs/{run_id}", "/api/runs/{run_id}/log",
                 "/api/runs/{run_id}/log/stream", "/api/runs/{run_id}/files", "/api/runs/{run_id}/files/{path}",
                 "/api/runs/{run_id}/cancel", "/api/sweeps/{run_id}", "/api/models", "/api/pools", "/api/nodes"):
        assert f"</strong> {path}</td>" in page.text, path
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    assert api.get("/openapi.json").json()["paths"].keys() >= {"/api/runs", "/api/nodes"}


def test_cluster_ui_command_serves_with_the_token_from_the_environment(cluster_dir: Path) -> None:
    import signal
    import subprocess
    import sys

    from cluster import embedded

    port = embedded.free_port()
    env = {**os.environ, "CLUSTER_UI_TOKEN": "from-the-environment-0123456789"}
    proc = subprocess.Popen([sys.executable, "-m", "cluster.cli", "ui", "--config", str(cluster_dir / "config.json"),
                             "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def answers() -> int | None:
            try:
                return httpx.get(f"{url}/api/health", headers={"Authorization": f"Bearer {env['CLUSTER_UI_TOKEN']}"},
                                 timeout=2).status_code
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                return None

        assert wait_until(answers, timeout=60, what="`cluster ui` to answer") == 200
        config_token = json.loads((cluster_dir / "config.json").read_text())["ui_token"]
        assert httpx.get(f"{url}/api/health", headers={"Authorization": f"Bearer {config_token}"}).status_code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode in (0, -signal.SIGTERM)  # uvicorn shuts down, then re-raises the signal
    assert f"http://127.0.0.1:{port}/" in out.decode() and env["CLUSTER_UI_TOKEN"] not in out.decode()
