"""The Azure ML v1 surface people port from (issue 13), without servers: honest configuration (unknown arguments
refused, meaningless Azure ones warned about once each), Environment / CondaDependencies, the version, integer-like
provisioning strings."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

import cluster
from cluster import CondaDependencies, Environment, Estimator, IgnoredArgumentWarning, NodePool, ScriptRunConfig
from cluster.errors import UsageError


@pytest.fixture
def src(tmp_path: Path) -> Path:
    (tmp_path / "train.py").write_text("print('hi')\n")
    return tmp_path


def test_version_is_exposed() -> None:
    assert cluster.__version__ == cluster.VERSION
    assert cluster.__version__[0].isdigit()


@pytest.mark.parametrize("call", [
    lambda s: Estimator(s, "train.py", colour="red"),
    lambda s: ScriptRunConfig(s, "train.py", colour="red"),
    lambda s: NodePool.provisioning_configuration(colour="red"),
])
def test_unknown_arguments_are_named(src: Path, call: object) -> None:
    with pytest.raises(UsageError, match="unknown argument\\(s\\) 'colour'"):
        call(src)  # type: ignore[operator]


def test_typos_get_a_suggestion(src: Path) -> None:
    with pytest.raises(UsageError, match="did you mean 'max_nodes'"):
        NodePool.provisioning_configuration(max_node=3)
    with pytest.raises(UsageError, match="did you mean 'pip_packages'"):
        Estimator(src, "train.py", pip_package=["numpy"])


def test_azure_only_arguments_warn_once_each(src: Path) -> None:
    with pytest.warns(IgnoredArgumentWarning) as record:
        est = Estimator(src, "train.py", use_gpu=True, vm_priority="lowpriority", custom_docker_image="img:1")
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 3
    assert [m.split(":")[1].split("=")[0].strip() for m in messages] == ["custom_docker_image", "use_gpu",
                                                                          "vm_priority"]
    assert est.run_config().pip_packages == ()
    with pytest.warns(IgnoredArgumentWarning, match="vm_priority"):
        NodePool.provisioning_configuration(vm_priority="lowpriority", max_nodes=2)
    with pytest.warns(IgnoredArgumentWarning, match="docker_runtime_config"):
        ScriptRunConfig(src, "train.py", docker_runtime_config={})


def test_arguments_that_would_change_the_run_are_refused(src: Path) -> None:
    with pytest.raises(UsageError, match="unsupported argument\\(s\\) node_count"):
        Estimator(src, "train.py", node_count=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Estimator(src, "train.py", node_count=1)  # the default is harmless: no warning


def test_provisioning_accepts_integer_like_strings() -> None:
    spec = NodePool.provisioning_configuration(min_nodes="0", max_nodes=" 4 ", idle_seconds_before_scaledown="90")
    assert (spec.min_nodes, spec.max_nodes, spec.idle_seconds_before_scaledown) == (0, 4, 90.0)
    with pytest.raises(UsageError, match="max_nodes must be a whole number"):
        NodePool.provisioning_configuration(max_nodes="four")


def test_environment_from_files(tmp_path: Path) -> None:
    req = tmp_path / "requirements.txt"
    req.write_text("# tools\nnumpy>=1.26\n\njoblib  # models\n")
    env = Environment.from_pip_requirements("pipenv", req)
    assert env.pip_packages == ("numpy>=1.26", "joblib")
    (tmp_path / "bad.txt").write_text("-r other.txt\n")
    with pytest.raises(UsageError, match=r"bad\.txt:1: pip option"):
        Environment.from_pip_requirements("bad", tmp_path / "bad.txt")
    yml = tmp_path / "env.yml"
    yml.write_text("name: x\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n  - scikit-learn\n"
                   "  - pip:\n    - tqdm\nvariables:\n  SEED: 3\n")
    env = Environment.from_conda_specification("condaenv", yml)
    assert env.conda_packages == ("python=3.11", "scikit-learn")
    assert env.pip_packages == ("tqdm",)
    assert env.environment_variables == {"SEED": "3"}
    assert env.python.conda_dependencies.channels == ["conda-forge"]


def test_environment_reaches_the_run_configuration(src: Path) -> None:
    env = Environment("myenv")
    env.python.conda_dependencies = CondaDependencies.create(pip_packages=["tqdm"], conda_packages=["scikit-learn"])
    env.environment_variables = {"SEED": "1"}
    rc = ScriptRunConfig(src, "train.py", environment=env).run_config()
    assert (rc.pip_packages, rc.conda_packages, rc.environment_variables) == (("tqdm",), ("scikit-learn",),
                                                                             {"SEED": "1"})
    rc = Estimator(src, "train.py", environment_definition=env, pip_packages=["numpy"]).run_config()
    assert rc.pip_packages == ("tqdm", "numpy") and rc.environment_variables == {"SEED": "1"}
    with pytest.raises(UsageError, match=r"Environment\.get\(ws, 'myenv'\)"):
        ScriptRunConfig(src, "train.py", environment="myenv")
    env.python.user_managed_dependencies = True
    with pytest.raises(UsageError, match="user-managed"):
        ScriptRunConfig(src, "train.py", environment=env)


def test_estimator_reads_azure_requirement_files(src: Path) -> None:
    (src / "requirements.txt").write_text("tqdm\n")
    (src / "env.yml").write_text("dependencies:\n  - scikit-learn\n")
    rc = Estimator(src, "train.py", pip_requirements_file="requirements.txt",
                   conda_dependencies_file="env.yml").run_config()
    assert rc.pip_packages == ("tqdm",) and rc.conda_packages == ("scikit-learn",)
    with pytest.raises(UsageError, match="is not a file"):
        Estimator(src, "train.py", pip_requirements_file="missing.txt")


def test_conda_dependencies_edit() -> None:
    deps = CondaDependencies.create(pip_packages=["numpy>=1"], python_version="3.11")
    deps.add_pip_package("numpy>=1")
    deps.add_conda_package("scipy")
    deps.remove_pip_package("NumPy")
    assert deps.pip_packages == [] and deps.conda_packages == ["python=3.11", "scipy"]
    with pytest.raises(UsageError, match="unknown argument"):
        CondaDependencies.create(pip_pakages=["x"])
