"""The tutorial notebook and the sweep example, executed as a user would: the notebook top to bottom in a real
Jupyter kernel (nbclient), the sweep as a script, both against the session's embedded cluster (its controller
scales a real pool from zero). A cell that raises fails the test, with the cell's output in the message.

A small training subset keeps them to a minute or two: ``TUTORIAL_TRAIN_LIMIT`` for the notebook (it reads no
command line), ``--train-limit`` for the sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster import Experiment, Model, Workspace
from cluster.sweep import HyperDriveRun
from tests.conftest import skip_or_fail
from tests.helpers import unique

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sklearn-mnist"
TRAIN_LIMIT = "1500"


def _env(cluster_dir: Path, mnist_dir: Path, pool: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTER_")}
    return {**env, "CLUSTER_CONFIG": str(cluster_dir / "config.json"), "MNIST_DIR": str(mnist_dir),
            "AML_COMPUTE_CLUSTER_NAME": pool, "AML_COMPUTE_CLUSTER_MAX_NODES": "2",
            "TUTORIAL_TRAIN_LIMIT": TRAIN_LIMIT, "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}


@pytest.fixture(scope="module")
def ws(cluster_dir: Path) -> Workspace:
    return Workspace.from_config(cluster_dir / "config.json")


@pytest.fixture(scope="module")
def example_pool(ws: Workspace) -> Iterator[str]:
    """The pool the notebook creates (and the sweep reuses); deleted afterwards, so later tests see no target."""
    name = unique("nbpool")
    yield name
    if name in ws.compute_targets:
        ws.compute_targets[name].delete()


def test_notebook_runs_top_to_bottom(cluster_dir: Path, mnist_dir: Path, example_pool: str, ws: Workspace,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        import nbclient
        import nbformat
    except ImportError as e:  # the dev extra has them: in CI this is a failure, not a skip
        skip_or_fail(f"{e.name} is not installed (pip install -e '.[dev]')")
    # the notebook finds the example at ./examples/sklearn-mnist (it is started in the repository root); here the
    # working folder is a scratch one, so data/ and tutorial-outputs/ do not land in the checkout
    (tmp_path / "examples").symlink_to(REPO / "examples")
    for key, value in _env(cluster_dir, mnist_dir, example_pool).items():
        monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith("CLUSTER_") and k != "CLUSTER_CONFIG"]:
        monkeypatch.delenv(key)
    nb = nbformat.read(str(EXAMPLE / "tutorial.ipynb"), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"a notebook cell failed:\n{e}")
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    # step 10's RunDetails is a live widget in a kernel (ipywidgets is in the dev extra)
    shown = [o for c in nb.cells if "RunDetails(run).show()" in c.source for o in c.get("outputs", [])]
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in shown), shown
    assert "local accuracy:" in outputs
    assert "Status: Completed" in outputs
    assert (tmp_path / "tutorial-outputs" / "mnist-samples.png").stat().st_size > 1000
    # the remote run really trained on the subset and its model was registered from it
    run = next(Experiment(ws, "sklearn-mnist").get_runs())
    assert run.get_status() == "Completed"
    assert "--train-limit" in run.get_details()["arguments"]
    assert 0.5 < run.get_metrics()["accuracy"] <= 1.0
    assert Model(ws, "sklearn_mnist").run_id == run.id


def test_sweep_example_runs(cluster_dir: Path, mnist_dir: Path, example_pool: str, ws: Workspace) -> None:
    experiment = unique("sweep-example")
    proc = subprocess.run([sys.executable, str(EXAMPLE / "sweep.py"), "--train-limit", TRAIN_LIMIT,
                           "--max-total-runs", "3", "--max-concurrent-runs", "2", "--max-nodes", "2",
                           "--experiment", experiment, "--compute", example_pool, "--model-name", "sweep_example"],
                          cwd=REPO, env=_env(cluster_dir, mnist_dir, example_pool), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"sweep.py exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    sweep_id = next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("sweep "))
    hd = HyperDriveRun(Experiment(ws, experiment), sweep_id)
    children = list(hd.get_children())
    assert len(children) == 3
    best = hd.get_best_run_by_primary_metric()
    assert best is not None
    model = Model(ws, "sweep_example")
    assert model.run_id == best.id
    assert json.dumps(best.get_metrics()["accuracy"])
