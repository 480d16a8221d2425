"""What to run: Estimator/ScriptRunConfig to RunConfiguration, with clear errors for bad input."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cluster import DataReference, Estimator, ScriptRunConfig
from cluster.errors import UsageError


@pytest.fixture
def src(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text("print('hi')\n")
    return tmp_path


def test_script_params_become_arguments_in_order(src: Path) -> None:
    ref = DataReference("workspaceblobstore").as_mount()
    est = Estimator(src, "train.py", script_params={"--data-folder": ref, "--regularization": 0.8,
                                                    "--flag": "", "--n": np.int64(3)},
                    compute_target="cpucluster", conda_packages=["scikit-learn"])
    rc = est.run_config()
    assert rc.arguments == ("--data-folder", ref.to_dict(), "--regularization", 0.8, "--flag", "--n", 3)
    assert rc.pool == "cpucluster" and rc.conda_packages == ("scikit-learn",)
    assert rc.with_arguments(["--a", 1]).arguments[-2:] == ("--a", 1)


def test_script_run_config_environment_as_dict_or_object(src: Path) -> None:
    env = SimpleNamespace(pip_packages=["tabulate"], environment_variables={"SEED": 7})
    rc = ScriptRunConfig(src, "train.py", arguments=["--x", 1], environment=env).run_config()
    assert rc.pip_packages == ("tabulate",) and rc.environment_variables == {"SEED": "7"} and rc.pool == "default"
    rc = ScriptRunConfig(src, "train.py", environment={"conda_packages": ["numpy"]}).run_config()
    assert rc.conda_packages == ("numpy",)


def test_bad_input_is_named(src: Path) -> None:
    with pytest.raises(UsageError, match="not found"):
        Estimator(src, "missing.py")
    with pytest.raises(UsageError, match="inside source_directory"):
        Estimator(src, "../train.py")
    with pytest.raises(UsageError, match="not a directory"):
        Estimator(src / "nope", "train.py")
    with pytest.raises(UsageError, match="script argument"):
        Estimator(src, "train.py", script_params={"--x": object()}).run_config()
    with pytest.raises(UsageError, match="positive"):
        Estimator(src, "train.py", max_run_duration_seconds=0)
    with pytest.raises(UsageError, match="compute_target"):
        Estimator(src, "train.py", compute_target=3).run_config()
