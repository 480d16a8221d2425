"""tasks.environment: the spec, and resolution that needs no venv (the builds are in
tests/integration/test_environment_builds.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cluster.errors import UsageError
from tasks.environment import (
    EnvSpec,
    conda_to_pip,
    resolve_environment,
)

# ---- spec ---------------------------------------------------------------------------------------

def test_spec_digest_is_canonical_and_validated() -> None:
    a = EnvSpec(pip_packages=("scipy", "numpy>=1.26"))
    assert a.digest() == EnvSpec(pip_packages=(" numpy>=1.26", "scipy", "scipy")).digest()
    assert a.digest() != EnvSpec(conda_packages=("scipy", "numpy>=1.26")).digest()
    assert len(a.digest()) == 64 and not a.is_empty
    assert EnvSpec().is_empty
    with pytest.raises(UsageError, match="pip_packages: '--index-url=http://evil' is a pip option, not a package"):
        EnvSpec(pip_packages=("--index-url=http://evil", "numpy"))
    with pytest.raises(UsageError, match="must be a list"):
        EnvSpec(pip_packages="numpy")  # type: ignore[arg-type]


def test_conda_names_and_versions_map_to_pip() -> None:
    assert conda_to_pip("pytorch") == "torch"
    assert conda_to_pip("py-xgboost>=2") == "xgboost>=2"
    assert conda_to_pip("conda-forge::numpy=1.26") == "numpy==1.26.*"
    assert conda_to_pip("numpy=1.26.*") == "numpy==1.26.*"
    assert conda_to_pip("scipy 1.11.4") == "scipy==1.11.4"
    assert conda_to_pip("pandas==2.1.0") == "pandas==2.1.0"
    assert conda_to_pip("python=3.11") is None
    assert conda_to_pip("pip") is None


# ---- resolve ------------------------------------------------------------------------------------

def test_empty_spec_is_the_base_python(tmp_path: Path) -> None:
    log: list[str] = []
    assert resolve_environment(EnvSpec(), tmp_path / "envs", log=log.append) == sys.executable
    assert log == [] and not (tmp_path / "envs").exists()
