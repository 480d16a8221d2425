"""The `cluster` command end to end: every command is a real subprocess (`python -m cluster.cli ...`) against the
session's embedded cluster, and runs execute on a real worker node started with `cluster worker`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import Experiment, Run, Workspace
from cluster.settings import Settings
from tests.helpers import EventCollector, NodeStarter, unique, wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]






def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any cluster configuration, so only cwd/--config decide."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    return {**env, "PYTHONUNBUFFERED": "1", "PYTHONIOENCODING": "utf-8", **extra}


class Cli:
    """Runs `python -m cluster.cli ...` in the folder that holds the test cluster's .cluster/."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def argv(self, *args: str | Path) -> list[str]:
        return [sys.executable, "-m", "cluster.cli", *map(str, args)]

    def __call__(self, *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
                 timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.argv(*args), cwd=cwd or self.cwd, env=env or clean_env(), capture_output=True,
                              text=True, encoding="utf-8", timeout=timeout)
        if check and proc.returncode != 0:
            pytest.fail(f"`cluster {' '.join(map(str, args))}` exited {proc.returncode}\n"
                        f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
        return proc

    def popen(self, *args: str | Path) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), cwd=self.cwd, env=clean_env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, encoding="utf-8")


# ---- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli(cluster_dir: Path) -> Cli:
    return Cli(cluster_dir.parent)  # `.cluster/config.json` is discovered from here


@pytest.fixture(scope="module")
def ws(settings: Settings) -> Workspace:
    return Workspace(settings)


@pytest.fixture(scope="module")
def pool() -> str:
    return unique("e2e")


@pytest.fixture(scope="module")
def node(cli: Cli, cluster_dir: Path, ws: Workspace, pool: str,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`cluster worker` for the module's pool, as a subprocess; stopped (TERM, then KILL) and reaped after."""
    starter = NodeStarter(ws.settings, cluster_dir, tmp_path_factory.mktemp("e2e-node"))
    try:
        yield starter.start(pool, name=unique("e2e-node"), config=cluster_dir / "config.json", env=clean_env()).name
    finally:
        starter.stop_all()


def make_source(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (root / rel).write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return root


HELLO = """
    import os, sys
    from cluster import Run
    name = sys.argv[sys.argv.index("--name") + 1]
    print(f"hello {name}")
    run = Run.get_context()
    run.log("score ✓", 0.5)
    run.log("learning rate", 0.01)
    os.makedirs("outputs/sub dir", exist_ok=True)
    open("outputs/sub dir/result ✓.txt", "w", encoding="utf-8").write(f"result for {name}\\n")
    open("outputs/model.txt", "w").write("weights\\n")
"""


@pytest.fixture(scope="module")
def finished(cli: Cli, node: str, pool: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A run submitted with `cluster submit --wait`: its id, experiment and the submit command's output."""
    src = make_source(tmp_path_factory.mktemp("hello-src"), {"hello.py": HELLO})
    experiment = unique("cli")
    out = cli("submit", "-e", experiment, "-d", src, "-s", "hello.py", "-p", pool, "--wait", "--", "--name", "world")
    run_id = out.stdout.splitlines()[0].strip()
    return {"id": run_id, "experiment": experiment, "stdout": out.stdout, "stderr": out.stderr}


# ---- tests --------------------------------------------------------------------------------------

def test_submit_wait_streams_the_log_and_ends_completed(finished: dict[str, str]) -> None:
    assert finished["id"].startswith(finished["experiment"] + "_")
    out = finished["stdout"]
    assert "hello world" in out.splitlines()
    assert "Status: Completed" in out
    assert "Traceback" not in finished["stderr"]


def test_runs_list_show_logs_metrics_files(cli: Cli, finished: dict[str, str], node: str, pool: str) -> None:
    run_id = finished["id"]
    listed = cli("runs", "list").stdout
    row = next(line for line in listed.splitlines() if line.startswith(run_id))
    assert row.split()[:4] == [run_id, "Completed", pool, "1"]
    only = cli("runs", "list", "-e", finished["experiment"]).stdout.splitlines()
    assert only[0].split()[:2] == ["RUN", "STATUS"] and [line.split()[0] for line in only[1:]] == [run_id]

    details = json.loads(cli("runs", "show", run_id).stdout)
    assert (details["runId"], details["status"], details["node"], details["attempt"]) == (run_id, "Completed", node, 1)
    assert details["arguments"] == ["--name", "world"]

    logs = cli("runs", "logs", run_id).stdout.splitlines()
    assert "hello world" in logs and any(line.startswith("[node] final status: Completed") for line in logs)

    metrics = json.loads(cli("runs", "metrics", run_id).stdout)
    assert metrics == {"score ✓": 0.5, "learning rate": 0.01}

    files = cli("runs", "files", run_id).stdout.splitlines()
    assert files == ["logs/driver.log", "outputs/model.txt", "outputs/sub dir/result ✓.txt"]


def test_runs_download(cli: Cli, finished: dict[str, str], tmp_path: Path) -> None:
    out = cli("runs", "download", finished["id"], "--prefix", "outputs/", "--dest", tmp_path / "dl").stdout
    assert len(out.splitlines()) == 2
    assert (tmp_path / "dl" / "outputs" / "sub dir" / "result ✓.txt").read_text(encoding="utf-8") == \
        "result for world\n"
    assert (tmp_path / "dl" / "outputs" / "model.txt").read_text() == "weights\n"
    cli("runs", "download", finished["id"], "--dest", tmp_path / "all")
    assert "hello world" in (tmp_path / "all" / "logs" / "driver.log").read_text(encoding="utf-8")


def test_logs_follow_on_a_running_run_goes_to_the_end(cli: Cli, ws: Workspace, pool: str, node: str,
                                                      tmp_path: Path) -> None:
    release = EventCollector()  # on loopback HTTP: a sandboxed run cannot see the test's folders
    src = make_source(tmp_path / "src", {"slow.py": """
        import sys, time, urllib.request
        print("tick 000", flush=True)
        while urllib.request.urlopen(sys.argv[1] + "/count/release", timeout=30).read() == b"0":
            time.sleep(0.05)
        for i in range(1, 200):
            print(f"tick {i:03d}", flush=True)
            if i % 50 == 0:
                time.sleep(0.3)
        print("the end")
    """})
    run_id = cli("submit", "-e", unique("follow"), "-d", src, "-s", "slow.py", "-p", pool, "--",
                 release.url).stdout.splitlines()[0].strip()
    # while it runs, plain `runs logs` shows what the live stream has so far
    wait_until(lambda: "tick 000" in cli("runs", "logs", run_id).stdout, timeout=60, what="the first tick")
    assert json.loads(cli("runs", "show", run_id).stdout)["status"] == "Running"

    follower = cli.popen("runs", "logs", run_id, "-f")
    try:
        time.sleep(0.5)  # let it attach before there is anything new
        urllib.request.urlopen(release.url + "/release/test/0", data=b"", timeout=30).read()
        out, err = follower.communicate(timeout=90)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    lines = out.splitlines()
    ticks = [line for line in lines if line.startswith("tick ")]
    assert ticks == [f"tick {i:03d}" for i in range(200)]
    assert "the end" in lines
    assert lines.index("the end") > lines.index("tick 199")
    assert Run(Experiment(ws, run_id.rsplit("_", 2)[0]), run_id).get_status() == "Completed"
    release.close()


def test_runs_cancel(cli: Cli, ws: Workspace, pool: str, node: str, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", {"forever.py": """
        import time
        print("started", flush=True)
        while True:
            time.sleep(0.1)
    """})
    experiment = unique("cancel")
    run_id = cli("submit", "-e", experiment, "-d", src, "-s", "forever.py", "-p", pool).stdout.splitlines()[0]
    run = Run(Experiment(ws, experiment), run_id)
    wait_until(lambda: "started" in cli("runs", "logs", run_id).stdout, timeout=60, what="the script to start")
    out = cli("runs", "cancel", run_id).stdout
    assert "cancel requested" in out
    wait_until(lambda: run.get_status() == "Canceled", timeout=60, what="the run to be canceled")
    assert json.loads(cli("runs", "show", run_id).stdout)["status"] == "Canceled"
    assert "already Canceled" in cli("runs", "cancel", run_id).stdout


def test_models_list_show_download(cli: Cli, ws: Workspace, finished: dict[str, str], tmp_path: Path) -> None:
    run = Run(Experiment(ws, finished["experiment"]), finished["id"])
    name = unique("cli-model")
    assert run.register_model(name, "outputs/model.txt", tags={"via": "sdk"}).version == 1
    assert run.register_model(name, "outputs/sub dir").version == 2

    rows = [line.split() for line in cli("models", "list").stdout.splitlines()]
    assert rows[0][:2] == ["NAME", "VERSION"]
    assert [name, "1", finished["id"]] in [r[:3] for r in rows] and [name, "2", finished["id"]] in [r[:3] for r in rows]
    assert [r[:2] for r in (line.split() for line in cli("models", "list", name).stdout.splitlines()[1:])] == \
        [[name, "1"], [name, "2"]]

    latest = json.loads(cli("models", "show", name).stdout)
    assert (latest["name"], latest["version"], latest["run_id"]) == (name, 2, finished["id"])
    assert list(latest["files"]) == ["result ✓.txt"]
    first = json.loads(cli("models", "show", name, "--version", "1").stdout)
    assert (first["version"], first["tags"], list(first["files"])) == (1, {"via": "sdk"}, ["model.txt"])

    path = cli("models", "download", name, "--version", "1", "--dest", tmp_path / "m1").stdout.strip()
    assert Path(path) == tmp_path / "m1" / "model.txt" and Path(path).read_text() == "weights\n"
    cli("models", "download", name, "--dest", tmp_path / "m2")
    assert (tmp_path / "m2" / "result ✓.txt").read_text(encoding="utf-8") == "result for world\n"


def test_submit_wait_of_a_failing_script_exits_nonzero(cli: Cli, pool: str, node: str, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", {"bad.py": """
        import sys
        print("working...")
        sys.exit("cannot find the data")
    """})
    proc = cli("submit", "-e", unique("fail"), "-d", src, "-s", "bad.py", "-p", pool, "--wait", check=False)
    assert proc.returncode == 8, proc
    assert "working..." in proc.stdout.splitlines() and "Status: Failed" in proc.stdout
    assert proc.stderr.startswith("error: run ") and "cannot find the data" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---- errors: a one-line cause, a nonzero exit code, no traceback --------------------------------

def assert_clean_error(proc: subprocess.CompletedProcess[str], first_line_starts: str) -> None:
    assert proc.returncode not in (0, 1), proc  # a ClusterError's own exit code, not a crash
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.splitlines()
    assert lines and lines[0].startswith(first_line_starts), proc.stderr
    assert all(line.startswith("  -> ") for line in lines[1:]), proc.stderr  # at most a hint follows


@pytest.mark.parametrize("command", [["runs", "show"], ["runs", "logs"], ["runs", "metrics"], ["runs", "cancel"],
                                     ["runs", "download"]])
def test_bad_run_id(cli: Cli, command: list[str]) -> None:
    proc = cli(*command, "no-such-run_123_abcdef", check=False)
    assert_clean_error(proc, "error: no run with id 'no-such-run_123_abcdef'")
    assert proc.returncode == 6


def test_missing_config(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "config.json"
    proc = cli("runs", "list", cwd=tmp_path, env=clean_env(CLUSTER_CONFIG=str(missing)), check=False)
    assert_clean_error(proc, f"error: no cluster configuration at {missing}")
    assert proc.returncode == 2
    proc = cli("worker", "--pool", "p", "--config", missing, cwd=tmp_path, check=False, timeout=60)
    assert_clean_error(proc, f"error: no cluster configuration at {missing}")
    if not any((d / ".cluster" / "config.json").exists() for d in (tmp_path, *tmp_path.parents)):
        proc = cli("models", "list", cwd=tmp_path, check=False)
        assert_clean_error(proc, "error: no cluster configuration found")


def test_interrupted_follow_resumes_where_it_was(cli: Cli, pool: str, node: str, tmp_path: Path) -> None:
    src = make_source(tmp_path / "src", {"ticks.py": """
        import time
        for i in range(300):
            print(f"tick {i:03d}", flush=True)
            time.sleep(0.01)
    """})
    run_id = cli("submit", "-e", unique("resume"), "-d", src, "-s", "ticks.py", "-p", pool).stdout.split()[0]
    seen: list[str] = []
    with cli.popen("runs", "logs", run_id, "-f") as first:  # closes its pipes on the way out
        assert first.stdout is not None and first.stderr is not None
        try:
            while len([s for s in seen if s.startswith("tick ")]) < 50:
                line = first.stdout.readline()
                assert line, "the follower ended early"
                seen.append(line.rstrip("\n"))
            first.send_signal(signal.SIGINT)
            first.wait(30)
            rest_out = first.stdout.read()  # through the same buffered reader that readline() filled
            err = first.stderr.read()
        finally:
            if first.poll() is None:
                first.kill()
    assert first.returncode == 130, err
    seen += rest_out.splitlines()
    after = err.rsplit("--after ", 1)[1].split()[0]
    second = cli("runs", "logs", run_id, "-f", "--after", after)
    ticks = [s for s in seen + second.stdout.splitlines() if s.startswith("tick ")]
    assert ticks == [f"tick {i:03d}" for i in range(300)]  # nothing lost, nothing twice, in order
