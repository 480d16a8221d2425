"""The tutorial's notebook is generated from the script, and both parse."""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sklearn-mnist"


def _load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_notebook", EXAMPLE / "make_notebook.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebook_is_current() -> None:
    assert (EXAMPLE / "tutorial.ipynb").read_text() == _load_generator().render(), \
        "run `python examples/sklearn-mnist/make_notebook.py`"


def test_notebook_cells_parse_and_cover_the_tutorial() -> None:
    nb = json.loads((EXAMPLE / "tutorial.ipynb").read_text())
    code = "".join("".join(c["source"]) + "\n" for c in nb["cells"] if c["cell_type"] == "code")
    ast.parse(code)
    for needle in ("Workspace.from_config()", "ComputeTarget.create", "ds.upload(", "ds.as_mount()",
                   "exp.submit(config=est)", "wait_for_completion(show_output=True)", "get_metrics()",
                   "get_file_names()", "register_model("):
        assert needle in code


def test_train_script_uses_only_the_swapped_imports() -> None:
    source = (EXAMPLE / "sklearn-mnist" / "train.py").read_text()
    tree = ast.parse(source)
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "cluster" in modules and "joblib" in modules
    assert not any(m and m.startswith("azureml") for m in modules)
    assert "np.float(" not in source and "sklearn.externals" not in source
