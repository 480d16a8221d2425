"""The Azure ML run API on a real cluster (issue 13): inside a script (log_image, log_table, upload_file/folder,
fail, child_run, experiment, parent), from outside (tags, properties, get_runs filters, Run.get, resubmit, the
CLI's runs list filters), Environment registration and what a run records (pip freeze, Git state), the model
registry from local files, get_best_run_by_primary_metric with failed and canceled children."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster import (
    ComputeTarget,
    ComputeTargetException,
    CondaDependencies,
    Environment,
    Experiment,
    Model,
    NodePool,
    Run,
    ScriptRunConfig,
    Workspace,
)
from cluster.cli import main
from cluster.errors import ConflictError, NotFoundError
from tests.helpers import unique, wait_until
from tests.integration.conftest import NodeProcess

pytestmark = pytest.mark.integration

SCRIPT = """
    import os, sys
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from cluster import Run
    run = Run.get_context()
    fig = plt.figure()
    plt.plot([1, 2, 3])
    run.log_image("curve", plot=fig)
    run.log_table("table", {"epoch": [1, 2], "loss": [0.5, 0.25]})
    with open("notes.txt", "w") as fh:
        fh.write("hello")
    run.upload_file("notes.txt", "notes.txt")
    os.makedirs("extra/sub", exist_ok=True)
    open("extra/sub/a.txt", "w").write("a")
    run.upload_folder("bundle", "extra")
    for fold in (1, 2):
        with run.child_run(f"fold-{fold}") as child:
            child.log("fold_accuracy", 0.5 + fold / 10)
    bad = run.child_run("broken")
    bad.fail("no data for this fold")
    run.log("experiment", run.experiment.name)
    run.log("has_parent", run.parent is not None)
    run.log("accuracy", float(sys.argv[1]) if len(sys.argv) > 1 else 0.5)
    if "--fail" in sys.argv:
        run.fail("the script gave up")
"""


@pytest.fixture(scope="module")
def pool(node: NodeProcess) -> str:
    return node.pool


def _submit(ws: Workspace, src: Path, pool: str, args: list[object] | None = None, **kw: object) -> Run:
    return Experiment(ws, "run-api").submit(ScriptRunConfig(src, "train.py", arguments=args or [],
                                                            compute_target=pool, **kw))  # type: ignore[arg-type]


def test_inside_a_script(ws: Workspace, pool: str, make_source: Callable[..., Path]) -> None:
    run = _submit(ws, make_source(SCRIPT), pool, ["0.75"])
    assert run.wait_for_completion(timeout=120)["status"] == "Completed"
    metrics = run.get_metrics()
    assert metrics["curve"] == "outputs/images/curve.png"
    assert metrics["table"] == {"epoch": [1, 2], "loss": [0.5, 0.25]}
    assert metrics["experiment"] == "run-api" and metrics["has_parent"] is False
    assert "fold_accuracy" not in metrics and "status" not in metrics and "child" not in metrics
    files = run.get_file_names()
    assert {"outputs/images/curve.png", "outputs/notes.txt", "outputs/bundle/sub/a.txt"} <= set(files)
    png = Path(run.download_file("outputs/images/curve.png", output_file_path=str(Path.cwd() / "curve-dl.png")))
    try:
        assert png.read_bytes()[:4] == b"\x89PNG"
    finally:
        png.unlink()
    children = run.get_children()
    assert [c.name for c in children] == ["fold-1", "fold-2", "broken"]
    assert [c.get_status() for c in children] == ["Completed", "Completed", "Failed"]
    assert children[1].get_metrics() == {"fold_accuracy": 0.7}
    assert children[2].get_details()["error"] == {"message": "no data for this fold"}


def test_fail_marks_the_run_failed_even_if_it_exits_zero(ws: Workspace, pool: str,
                                                          make_source: Callable[..., Path]) -> None:
    run = _submit(ws, make_source(SCRIPT), pool, ["0.1", "--fail"])
    details = run.wait_for_completion(timeout=120, raise_on_error=False)
    assert details["status"] == "Failed"
    assert details["error"]["message"] == "the script gave up" and details["error"]["exit_code"] == 0


def test_tags_properties_filters_and_lookup(ws: Workspace, pool: str, make_source: Callable[..., Path]) -> None:
    src = make_source("from cluster import Run\nimport sys\nRun.get_context().log('accuracy', float(sys.argv[1]))\n")
    exp = Experiment(ws, unique("filters"))
    runs = [exp.submit(ScriptRunConfig(src, "train.py", arguments=[a], compute_target=pool), tags={"batch": "1"})
            for a in (0.5, 0.95)]
    for r in runs:
        r.wait_for_completion(timeout=120)
    low, high = runs
    high.tag("best")
    high.set_tags({"team": "vision", "batch": None})
    assert high.get_tags() == {"best": "", "team": "vision"}
    assert low.get_tags() == {"batch": "1"}
    high.add_properties({"reviewed": "yes"})
    high.add_properties({"reviewed": "yes"})  # the same value again is fine
    with pytest.raises(ConflictError, match="immutable"):
        high.add_properties({"reviewed": "no"})
    assert high.get_properties()["reviewed"] == "yes"
    assert high.get_details()["properties"]["reviewed"] == "yes"

    assert [r.id for r in exp.get_runs(tags={"team": "vision"})] == [high.id]
    assert [r.id for r in exp.get_runs(tags="batch")] == [low.id]
    assert [r.id for r in exp.get_runs(properties={"reviewed": "yes"})] == [high.id]
    assert {r.id for r in exp.get_runs(status="Completed", type="azureml.scriptrun")} == {low.id, high.id}
    assert list(exp.get_runs(type="hyperdrive")) == []

    again = Run.get(ws, high.id)
    assert again.experiment.name == exp.name and again.get_metrics() == {"accuracy": 0.95}
    with pytest.raises(NotFoundError):
        Run.get(ws, "nope_1_abcdef01")



@pytest.fixture
def cli_config(cluster_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI finds the test cluster's configuration (as `cluster` would with CLUSTER_CONFIG set)."""
    for key in [k for k in os.environ if k.startswith("CLUSTER_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("CLUSTER_CONFIG", str(cluster_dir / "config.json"))


@pytest.mark.usefixtures("cli_config")
def test_cli_runs_list_sort_where_tag(ws: Workspace, pool: str, make_source: Callable[..., Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = make_source("from cluster import Run\nimport sys\nRun.get_context().log('accuracy', float(sys.argv[1]))\n")
    exp = Experiment(ws, unique("clilist"))
    runs = [exp.submit(ScriptRunConfig(src, "train.py", arguments=[a], compute_target=pool)) for a in (0.2, 0.9, 0.6)]
    for r in runs:
        r.wait_for_completion(timeout=120)
    runs[2].tag("keep", "yes")
    capsys.readouterr()
    assert main(["runs", "list", "-e", exp.name, "--sort-by", "accuracy"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[0] for line in lines] == [runs[1].id, runs[2].id, runs[0].id]
    assert main(["runs", "list", "-e", exp.name, "--where", "accuracy>=0.6",
                 "--sort-by", "accuracy", "--ascending"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == [runs[2].id, runs[1].id]
    assert main(["runs", "list", "-e", exp.name, "--tag", "keep=yes"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]] == [runs[2].id]
    assert main(["runs", "list", "-e", exp.name, "--where", "accuracy>>1"]) == 2


@pytest.mark.usefixtures("cli_config")
def test_resubmit_same_snapshot_new_arguments(ws: Workspace, pool: str, make_source: Callable[..., Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = make_source("from cluster import Run\nimport sys, os\n"
                      "Run.get_context().log('arg', sys.argv[1])\nRun.get_context().log('seed', os.environ['SEED'])\n")
    env = Environment(unique("env"))
    env.environment_variables = {"SEED": "42"}
    first = Experiment(ws, "resubmit").submit(ScriptRunConfig(src, "train.py", arguments=["one"], compute_target=pool,
                                                              environment=env))
    first.wait_for_completion(timeout=120)
    (src / "train.py").write_text("raise SystemExit('the source changed: a resubmit must not see this')\n")
    second = first.resubmit(arguments=["two"])
    assert second.wait_for_completion(timeout=120)["status"] == "Completed"
    assert second.get_metrics() == {"arg": "two", "seed": "42"}
    assert second.get_properties()["resubmitted_from"] == first.id
    assert ws.runs.spec(second.id).snapshot == ws.runs.spec(first.id).snapshot
    capsys.readouterr()
    assert main(["runs", "resubmit", "--wait", second.id]) == 0  # same args
    third_id = capsys.readouterr().out.splitlines()[0]
    third = Run.get(ws, third_id)
    assert third.get_metrics() == {"arg": "two", "seed": "42"}


def test_environment_registered_and_recorded(ws: Workspace, pool: str, make_source: Callable[..., Path],
                                             tmp_path: Path) -> None:
    name = unique("sklearn-env")
    env = Environment(name)
    env.python.conda_dependencies = CondaDependencies.create(conda_packages=["scikit-learn"])
    env.environment_variables = {"MODE": "registered"}
    assert env.register(ws).version == 1
    assert env.register(ws).version == 1  # unchanged: the same version
    env.environment_variables = {"MODE": "v2"}
    assert env.register(ws).version == 2
    back = Environment.get(ws, name)
    assert back.version == 2 and back.conda_packages == ("scikit-learn",)
    assert Environment.get(ws, name, version=1).environment_variables == {"MODE": "registered"}
    assert name in Environment.list(ws)

    # a source directory in a Git repository: the run records its commit and whether it was dirty
    src = make_source("import os\nfrom cluster import Run\nRun.get_context().log('mode', os.environ['MODE'])\n")
    git = ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "first"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    (src / "untracked.txt").write_text("dirty")
    run = Experiment(ws, "environments").submit(ScriptRunConfig(src, "train.py", compute_target=pool,
                                                               environment=Environment.get(ws, name)))
    assert run.wait_for_completion(timeout=300)["status"] == "Completed"
    assert run.get_metrics() == {"mode": "v2"}
    props = run.get_details()["properties"]
    assert props["git.commit"] == commit and props["git.dirty"] == "true"
    freeze = props["environment.pip_freeze"].splitlines()
    assert any(line.lower().startswith("scikit-learn==") for line in freeze)
    assert any(line.lower().startswith("numpy==") for line in freeze)


def test_model_register_from_local_files(ws: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = unique("local-model")
    (tmp_path / "model.pkl").write_bytes(b"weights")
    model = Model.register(workspace=ws, model_path=str(tmp_path / "model.pkl"), model_name=name,
                           tags={"area": "mnist"}, description="a local file")
    assert (model.version, model.tags, model.description, model.run_id) == (1, {"area": "mnist"}, "a local file",
                                                                            None)
    folder = tmp_path / "bundle"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    v2 = Model.register(ws, str(folder), name)
    assert v2.version == 2 and sorted(v2.files) == ["a.txt", "sub/b.txt"]
    model.add_tags({"stage": "prod"})
    assert Model(ws, name, 1).tags == {"area": "mnist", "stage": "prod"}
    monkeypatch.chdir(tmp_path)
    path = Model.get_model_path(name, version=1, _workspace=ws)
    assert Path(path).read_bytes() == b"weights" and Path(path).parts[0] == "azureml-models"
    assert Path(Model.get_model_path(name, _workspace=ws), "sub", "b.txt").read_text() == "b"
    # without a workspace (a scoring script): the configuration is found as Workspace.from_config() finds it
    scoring = tmp_path / "scoring"
    (scoring / ".cluster").mkdir(parents=True)
    (scoring / ".cluster" / "config.json").write_text(json.dumps(ws.settings.to_dict()))
    monkeypatch.chdir(scoring)
    for var in ("CLUSTER_CONFIG", "CLUSTER_REDIS_URL", "CLUSTER_S3_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    assert Path(Model.get_model_path(name, version=1)).read_bytes() == b"weights"
    v2.delete()
    assert Model(ws, name).version == 1
    with pytest.raises(NotFoundError):
        Model(ws, name, 2)
    with pytest.warns(UserWarning, match="model_framework"):
        assert Model.register(ws, str(tmp_path / "model.pkl"), name, model_framework="ScikitLearn").version == 3


def test_compute_target_lookup_as_in_azure(ws: Workspace) -> None:
    name = unique("lookup")
    try:
        ComputeTarget(workspace=ws, name=name)
        raise AssertionError("expected ComputeTargetException")
    except ComputeTargetException:
        ComputeTarget.create(ws, name, NodePool.provisioning_configuration(max_nodes="2"))
    found = ComputeTarget(workspace=ws, name=name)
    assert isinstance(found, NodePool) and found.max_nodes == 2
    found.delete()


def test_run_details_widget_refreshes_until_the_run_ends(ws: Workspace, pool: str, make_source: Callable[..., Path],
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from IPython.core.interactiveshell import InteractiveShell

    from cluster.widgets import RunDetails

    src = make_source("""
        import time
        from cluster import Run
        run = Run.get_context()
        for i in range(4):
            print(f"step {i}", flush=True)
            run.log("loss", 1.0 / (i + 1))
            time.sleep(0.5)
    """)
    run = _submit(ws, src, pool)
    RunDetails(run).show()  # not in Jupyter: a text snapshot
    assert capsys.readouterr().out.startswith(run.id)
    shell = InteractiveShell.instance()  # an IPython session: show() displays and refreshes
    try:
        view = RunDetails(run)
        widget = view.show(refresh_seconds=0.2)
        wait_until(lambda: "Completed" in widget.value, 120, "the widget showing the final status")
        assert "step 3" in widget.value and "loss" in widget.value
        # without ipywidgets: an HTML display, the same content
        monkeypatch.setitem(__import__("sys").modules, "ipywidgets", None)
        handle = RunDetails(run).show()
        assert handle is not None and handle.display_id
        html_text = RunDetails(run).get_html()
        assert "Completed" in html_text and "step 0" in html_text
    finally:
        view.stop()
        InteractiveShell.clear_instance()
        del shell
