"""Scripts that fail in every way a script can, as real runs on a real node, one row per way: what the script
does, and the run's final status, error kind and cause (plus what its stderr tail or its log must show). Then the
SDK mistakes that need a cluster to be noticed (a missing compute target, model, file or folder).

The node is started with ``--size small`` (1 CPU, a 2 GiB address-space limit), like a node of a small pool, so
the memory row fails fast instead of eating the machine. All runs are queued before the node starts (so one
row's data can be removed between submit and run); the node then works through them and each row waits for
its own run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cluster import (
    ComputeTarget,
    ComputeTargetException,
    ConflictError,
    DataReference,
    Datastore,
    Experiment,
    Model,
    NodePool,
    NotFoundError,
    Run,
    RunFailedError,
    ScriptRunConfig,
    UsageError,
    Workspace,
    layout,
)
from cluster.settings import Settings
from tests.helpers import unique
from tests.integration.conftest import NodeProcess, NodeStarter

pytestmark = pytest.mark.integration

RUN_TIMEOUT = 240.0


@dataclass(frozen=True)
class ScriptRow:
    input: str  # what the script does (where: the run's own script)
    script: str
    status: str  # the run's final status
    kind: str | None  # error kind: user | timeout | infrastructure (None when it completes)
    cause: str  # fragment of the error message (a completed run: of its driver log)
    stderr: str | None = None  # fragment of the error's stderr tail
    max_seconds: float | None = None
    pip: tuple[str, ...] = ()
    data: str | None = None  # a datastore folder passed as --data (mounted)
    check: Callable[[Workspace, Run], None] | None = field(default=None, compare=False)


def _metrics_are(expected: dict[str, Any]) -> Callable[[Workspace, Run], None]:
    def check(_ws: Workspace, run: Run) -> None:
        metrics = run.get_metrics()
        for name, value in expected.items():
            assert metrics.get(name) == value, (name, metrics)
    return check


def _files_are(present: set[str], absent: frozenset[str] | set[str] = frozenset()) -> Callable[[Workspace, Run], None]:
    def check(_ws: Workspace, run: Run) -> None:
        names = set(run.get_file_names())
        assert present <= names, (present - names, names)
        assert not (absent & names), (absent & names, names)
    return check


def _log_has(*fragments: str) -> Callable[[Workspace, Run], None]:
    def check(ws: Workspace, run: Run) -> None:
        text = ws.store.get_bytes(run.files_prefix() + layout.RUN_DRIVER_LOG).decode("utf-8")
        for f in fragments:
            assert f in text, f
    return check


ROWS: list[ScriptRow] = [
    # ---- the script raises or exits ---------------------------------------------------------------------------
    ScriptRow("raises ValueError", "raise ValueError('bad learning rate')", "Failed", "user", "exit code 1",
              stderr="ValueError: bad learning rate"),
    ScriptRow("sys.exit(3)", "import sys; sys.exit(3)", "Failed", "user", "exit code 3"),
    ScriptRow("sys.exit('a message')", "import sys; sys.exit('gave up: no data')", "Failed", "user", "exit code 1",
              stderr="gave up: no data"),
    ScriptRow("has a syntax error", "def broken(:\n    pass", "Failed", "user", "exit code 1", stderr="SyntaxError"),
    ScriptRow("imports a missing module", "import no_such_module_xyz", "Failed", "user", "exit code 1",
              stderr="ModuleNotFoundError: No module named 'no_such_module_xyz'"),
    ScriptRow("reads stdin", "input('your name? ')", "Failed", "user", "exit code 1", stderr="EOFError"),
    # ---- the script dies by a signal --------------------------------------------------------------------------
    ScriptRow("kills itself with SIGKILL", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "Failed",
              "user", "killed by signal SIGKILL"),
    ScriptRow("kills itself with SIGTERM", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)", "Failed",
              "user", "killed by signal SIGTERM"),
    ScriptRow("segfaults", "import ctypes; ctypes.string_at(0)", "Failed", "user", "killed by signal SIGSEGV"),
    # ---- time limit and memory --------------------------------------------------------------------------------
    ScriptRow("runs past its time limit", "import time\nprint('working', flush=True)\nwhile True: time.sleep(0.1)",
              "Failed", "timeout", "time limit of 2s exceeded", max_seconds=2),
    ScriptRow("allocates more than the node size allows", "x = bytearray(3 * 1024**3)", "Failed", "user",
              "exit code 1", stderr="MemoryError"),
    # ---- missing data and packages ----------------------------------------------------------------------------
    ScriptRow("mounts a datastore folder removed after submit", "print('never runs')", "Failed", "infrastructure",
              "nothing in datastore", data="bad-runs-vanishing"),
    ScriptRow("opens a data file that is not there",
              "import sys\nopen(sys.argv[sys.argv.index('--data') + 1] + '/missing.csv')", "Failed", "user",
              "exit code 1", stderr="FileNotFoundError", data="bad-runs-data"),
    ScriptRow("needs a pip package that does not exist", "print('never runs')", "Failed", "infrastructure",
              "pip could not install", pip=("no-such-package-for-cluster-tests-4f1e",)),
    # ---- bad metric values ------------------------------------------------------------------------------------
    ScriptRow("logs NaN, inf, a string and huge numbers",
              "from cluster import Run\nrun = Run.get_context()\nrun.log('loss', float('nan'))\n"
              "run.log('gain', float('inf'))\nrun.log('note', 'diverged')\nrun.log('big', 10**30)\n"
              "run.log('tiny', 1e-300)\nrun.log('max', 1.7e308)",
              "Completed", None, "final status: Completed",
              check=_metrics_are({"loss": "nan", "gain": "inf", "note": "diverged", "big": 10**30, "tiny": 1e-300,
                                  "max": 1.7e308})),
    ScriptRow("logs a dict as a metric", "from cluster import Run\nRun.get_context().log('acc', {'a': 1})", "Failed",
              "user", "exit code 1", stderr="cannot log a dict"),
    ScriptRow("logs a metric without a name", "from cluster import Run\nRun.get_context().log('', 1)", "Failed",
              "user", "exit code 1", stderr="metric name must be a non-empty string"),
    # ---- odd output files -------------------------------------------------------------------------------------
    ScriptRow("writes an output file whose name is not UTF-8",
              "open(b'outputs/r\\xe9sum\\xe9.txt', 'w').write('x')\nopen('outputs/ok.txt', 'w').write('y')",
              "Completed", None, "uploaded as outputs/r%E9sum%E9.txt",
              check=_files_are({"outputs/r%E9sum%E9.txt", "outputs/ok.txt"})),
    ScriptRow("writes output file names with a newline and a tab",
              "open('outputs/a\\nb.txt', 'w').write('x')\nopen('outputs/c\\td.txt', 'w').write('y')",
              "Completed", None, "uploaded as outputs/a%0Ab.txt", check=_files_are({"outputs/a%0Ab.txt",
                                                                                   "outputs/c%09d.txt"})),
    ScriptRow("writes empty, long-named and deeply nested outputs, a FIFO and a symlink",
              "import os\nopen('outputs/empty.txt', 'w').close()\nopen('outputs/' + 'n' * 200, 'w').write('x')\n"
              "d = 'outputs/' + '/'.join(['d'] * 20)\nos.makedirs(d)\nopen(d + '/deep.txt', 'w').write('x')\n"
              "os.mkfifo('outputs/pipe')\nos.symlink('/etc/passwd', 'outputs/passwd')",
              "Completed", None, "final status: Completed",
              check=_files_are({"outputs/empty.txt", "outputs/" + "n" * 200,
                                "outputs/" + "/".join(["d"] * 20) + "/deep.txt"},
                               absent={"outputs/pipe", "outputs/passwd"})),
    ScriptRow("replaces its outputs folder with a file",
              "import shutil\nshutil.rmtree('outputs')\nopen('outputs', 'w').write('not a folder')", "Completed",
              None, "uploaded 0 file(s)", check=_files_are(set(), absent={"outputs"})),
    # ---- odd output on stdout ---------------------------------------------------------------------------------
    ScriptRow("prints a 2 MB line", "print('HUGE' + 'A' * 2_000_000)\nprint('after the huge line')", "Completed", None,
              "after the huge line", check=_log_has("HUGEAAAA")),
    ScriptRow("prints bytes that are not UTF-8",
              "import sys\nsys.stdout.buffer.write(b'junk \\xff\\xfe end\\n')\nsys.stdout.flush()", "Completed", None,
              "junk \ufffd\ufffd end"),
    ScriptRow("closes stdout and stderr, then succeeds", "import os\nos.close(1)\nos.close(2)", "Completed", None,
              "final status: Completed"),
]


# ---- the node: a small one, for this module's pool only --------------------------------------------------------

@pytest.fixture(scope="module")
def bad_pool() -> str:
    return unique("bad")


@pytest.fixture(scope="module")
def small_node(settings: Settings, cluster_dir: Path, bad_pool: str,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One `cluster worker --size small` node serving the module's pool; stopped and reaped at the end."""
    starter = NodeStarter(settings, cluster_dir, tmp_path_factory.mktemp("bad-node"))
    try:
        node = starter.start(bad_pool, name=unique("bad-node"), extra_args=("--size", "small"),
                             config=cluster_dir / "config.json")
        yield node
    finally:
        starter.stop_all()


@pytest.fixture(scope="module")
def submitted(ws: Workspace, bad_pool: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every row's run, queued before the pool has a node (so data can vanish between submit and run)."""
    ds = ws.get_default_datastore()
    data = tmp_path_factory.mktemp("bad-runs-data")
    (data / "present.csv").write_text("a,b\n1,2\n")
    for folder in ("bad-runs-data", "bad-runs-vanishing"):
        ds.upload(src_dir=data, target_path=folder, overwrite=True, show_progress=False)
    exp = Experiment(ws, unique("bad-runs"))
    out = {}
    for i, row in enumerate(ROWS):
        src = tmp_path_factory.mktemp(f"bad-src-{i}")
        (src / "train.py").write_text(textwrap.dedent(row.script) + "\n", encoding="utf-8")
        args: list[Any] = ["--data", ds.path(row.data).as_mount()] if row.data else []
        config = ScriptRunConfig(source_directory=src, script="train.py", arguments=args, compute_target=bad_pool,
                                 environment={"pip_packages": list(row.pip)}, max_run_duration_seconds=row.max_seconds)
        out[row.input] = exp.submit(config)
    ws.store.client.remove_object(ds.container_name, "bad-runs-vanishing/present.csv")
    return out


@pytest.fixture(scope="module")
def runs(submitted: dict[str, Run], small_node: NodeProcess) -> dict[str, Run]:
    """The rows' runs, with the node that works through them (in order) started."""
    return submitted


def test_the_table_covers_every_way_a_script_fails() -> None:
    assert len(ROWS) >= 20
    assert {r.kind for r in ROWS} >= {"user", "timeout", "infrastructure", None}


@pytest.mark.parametrize("row", ROWS, ids=[r.input for r in ROWS])
def test_bad_run(ws: Workspace, runs: dict[str, Run], row: ScriptRow) -> None:
    run = runs[row.input]
    details = run.wait_for_completion(timeout=RUN_TIMEOUT, raise_on_error=False)
    log = ws.store.get_bytes(run.files_prefix() + layout.RUN_DRIVER_LOG).decode("utf-8")
    shown = f"{row.input}: {details['status']} {details['error']}\n--- driver log (end) ---\n{log[-3000:]}"
    assert details["status"] == row.status, shown
    assert details["attempt"] == 1, shown  # a script's failure is never retried as if the node had died
    if row.kind is None:
        assert details["error"] is None, shown
        assert row.cause in log, shown
    else:
        err = details["error"]
        assert err["kind"] == row.kind, shown
        assert row.cause in err["message"], shown
        if row.stderr is not None:
            assert any(row.stderr in line for line in err["stderr_tail"]), shown
    if row.check is not None:
        row.check(ws, run)


def test_a_failed_run_raises_its_cause_to_the_waiter(runs: dict[str, Run]) -> None:
    """``wait_for_completion()`` (raise_on_error defaults to True) names the cause and shows the stderr tail."""
    run = runs["raises ValueError"]
    with pytest.raises(RunFailedError) as info:
        run.wait_for_completion(timeout=RUN_TIMEOUT)
    assert "exit code 1" in info.value.message and "ValueError: bad learning rate" in info.value.message
    assert info.value.hint and f"cluster runs logs {run.id}" in info.value.hint


def test_cli_submit_wait_of_a_failing_script_exits_8(settings: Settings, cluster_dir: Path, bad_pool: str,
                                                      small_node: NodeProcess, tmp_path: Path) -> None:
    """`cluster submit --wait` of a script that fails: exit 8 (RunFailedError), the cause and the script's stderr
    tail (its traceback), but no traceback of the CLI's own."""
    (tmp_path / "fail.py").write_text("raise ValueError('bad learning rate')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    env.update(PYTHONUNBUFFERED="1", PYTHONIOENCODING="utf-8", CLUSTER_CONFIG=str(cluster_dir / "config.json"))
    proc = subprocess.run([sys.executable, "-m", "cluster.cli", "submit", "-e", unique("bad-cli-wait"), "-d",
                           str(tmp_path), "-s", "fail.py", "-p", bad_pool, "--wait"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, encoding="utf-8", timeout=RUN_TIMEOUT)
    assert proc.returncode == 8, proc
    err = proc.stderr[proc.stderr.index("error: run "):]
    assert "failed: exit code 1" in err and "ValueError: bad learning rate" in err, proc.stderr
    assert "-> full log: `cluster runs logs" in err
    frames = [line for line in proc.stderr.splitlines() if line.strip().startswith('File "')]
    assert frames and all("fail.py" in f for f in frames), frames  # only the script's own traceback


# ---- SDK mistakes that need a cluster to be noticed ------------------------------------------------------------

@dataclass(frozen=True)
class SdkRow:
    input: str
    call: Callable[[Workspace, Path, Run], Any]
    error: type[Exception]
    fragment: str


def _second_create(ws: Workspace, name: str) -> None:
    cfg = NodePool.provisioning_configuration(max_nodes=1)
    first = ComputeTarget.create(ws, name, cfg)
    try:
        ComputeTarget.create(ws, name, cfg)
    finally:
        first.delete()  # other modules expect a workspace without leftover compute targets


def _conflicting_upload(ds: Datastore, tmp: Path) -> None:
    folder = tmp / "up"
    folder.mkdir()
    (folder / "f.txt").write_text("one")
    target = unique("bad-upload")
    ds.upload(src_dir=folder, target_path=target, show_progress=False)
    (folder / "f.txt").write_text("two")
    ds.upload(src_dir=folder, target_path=target, show_progress=False)


def _download_over_a_file(ds: Datastore, tmp: Path) -> None:
    (tmp / "dl").mkdir()
    (tmp / "dl" / "bad-runs-data").write_text("a file where the download needs a folder")
    ds.download(tmp / "dl", prefix="bad-runs-data", show_progress=False)


def _model_download_into_a_file(run: Run, tmp: Path) -> None:
    model = run.register_model(unique("bad-model"), "outputs/ok.txt")
    (tmp / "a-file").write_text("not a folder")
    model.download(target_dir=tmp / "a-file")


def _src_dir(tmp: Path) -> Path:
    (tmp / "train.py").write_text("print('never queued')\n")
    return tmp


def _submit_with_missing_data(ws: Workspace, tmp: Path, mode: str) -> None:
    (tmp / "train.py").write_text("print('never queued')\n")
    ref = ws.get_default_datastore().path("no-such-folder-for-bad-runs")
    ref = ref.as_mount() if mode == "mount" else ref.as_download()
    Experiment(ws, unique("bad-data")).submit(ScriptRunConfig(tmp, "train.py", arguments=["--data", ref],
                                                              compute_target="bad-runs-never"))


SDK_ROWS: list[SdkRow] = [
    SdkRow("exp.submit(arguments=[ds.path(<missing>).as_mount()])", lambda ws, tmp, run: _submit_with_missing_data(
           ws, tmp, "mount"), NotFoundError, "nothing in datastore 'workspaceblobstore' under 'no-such-folder"),
    SdkRow("exp.submit(arguments=[ds.path(<missing>).as_download()])", lambda ws, tmp, run: _submit_with_missing_data(
           ws, tmp, "download"), NotFoundError, "nothing in datastore"),
    SdkRow("exp.submit(arguments=[DataReference('otherstore')])", lambda ws, tmp, run: Experiment(
           ws, unique("bad-data")).submit(ScriptRunConfig(_src_dir(tmp), "train.py", arguments=[
               DataReference("otherstore", "x")])), NotFoundError, "no datastore named 'otherstore'"),
    SdkRow("model.download(target_dir=<a file>)", lambda ws, tmp, run: _model_download_into_a_file(run, tmp),
           UsageError, "is an existing file, not a folder"),
    SdkRow("Model(ws, <existing>, version=99)", lambda ws, tmp, run: Model(
           ws, run.register_model(unique("bad-model"), "outputs/ok.txt").name, version=99), NotFoundError,
           "has no version 99"),
    SdkRow("ws.compute_targets[<missing>]", lambda ws, tmp, run: ws.compute_targets["no-such-pool-xyz"],
           ComputeTargetException, "no compute target named 'no-such-pool-xyz'"),
    SdkRow("ds.download(<a file where a folder goes>)", lambda ws, tmp, run: _download_over_a_file(
           ws.get_default_datastore(), tmp), ConflictError, "is a file where a folder is needed"),
    SdkRow("ComputeTarget(workspace=ws, name=<missing>)", lambda ws, tmp, run: ComputeTarget(workspace=ws,
           name="no-such-pool-xyz"), ComputeTargetException, "no compute target named 'no-such-pool-xyz'"),
    SdkRow("ComputeTarget.create(ws, <existing>, cfg)", lambda ws, tmp, run: _second_create(ws, unique("dup")),
           ConflictError, "already exists"),
    SdkRow("Model(ws, <missing>)", lambda ws, tmp, run: Model(ws, "no-such-model-xyz"), NotFoundError,
           "no model named 'no-such-model-xyz'"),
    SdkRow("ds.download(prefix=<missing>)", lambda ws, tmp, run: ws.get_default_datastore().download(
           tmp / "dl", prefix="no-such-prefix-xyz", show_progress=False), NotFoundError, "nothing under"),
    SdkRow("ds.upload over a different file", lambda ws, tmp, run: _conflicting_upload(ws.get_default_datastore(),
           tmp), ConflictError, "already exists and differs"),
    SdkRow("run.download_file(<missing>)", lambda ws, tmp, run: run.download_file("outputs/nope.txt", tmp),
           NotFoundError, "has no file 'outputs/nope.txt'"),
    SdkRow("run.register_model(model_path=<missing>)", lambda ws, tmp, run: run.register_model(
           "m-" + unique("x"), "outputs/model.pkl"), NotFoundError, "has no file or folder 'outputs/model.pkl'"),
    SdkRow("run.register_model(model_pth=...) (a typo)", lambda ws, tmp, run: run.register_model(
           "m", model_path="outputs/ok.txt", model_pth="x"), UsageError, "did you mean 'model_path'"),
]


@pytest.mark.parametrize("row", SDK_ROWS, ids=[r.input for r in SDK_ROWS])
def test_sdk_mistake_on_a_cluster(ws: Workspace, runs: dict[str, Run], tmp_path: Path, row: SdkRow) -> None:
    run = runs["writes an output file whose name is not UTF-8"]
    run.wait_for_completion(timeout=RUN_TIMEOUT, raise_on_error=False)
    with pytest.raises(row.error) as info:
        row.call(ws, tmp_path, run)
    assert row.fragment in str(info.value)


def test_azure_compute_target_idiom(ws: Workspace) -> None:
    """``try: ComputeTarget(workspace=ws, name=n) except ComputeTargetException: create`` works as in Azure ML."""
    name = unique("idiom")
    try:
        target = ComputeTarget(workspace=ws, name=name)
        found = True
    except ComputeTargetException:
        target = ComputeTarget.create(ws, name, NodePool.provisioning_configuration(max_nodes=1))
        found = False
    assert not found and target.name == name
    again = ComputeTarget(workspace=ws, name=name)
    assert isinstance(again, NodePool) and again.max_nodes == 1 and again.status.serialize()["vmSize"] == "small"
    again.delete()
