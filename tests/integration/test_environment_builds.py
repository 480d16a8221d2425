"""tasks.environment building real virtualenvs with real pip runs in tmp_path caches, no mocks.

In the integration tier: each test creates a venv and runs pip (seconds each). The spec and the resolution
rules that need no venv are in tests/unit/test_environment.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cluster.errors import ClusterError
from tasks.environment import (
    MARKER,
    EnvironmentBuildError,
    EnvSpec,
    resolve_environment,
)


def _site_packages(env_dir: Path) -> Path:
    return next(env_dir.glob("lib/python*/site-packages"))


def _run_python(python: str, code: str) -> str:
    return subprocess.run([python, "-c", code], check=True, capture_output=True, text=True).stdout.strip()


pytestmark = pytest.mark.integration


# ---- resolve: venvs built by pip --------------------------------------------------------------------

def test_system_package_venv_is_built_once_and_reused(tmp_path: Path) -> None:
    spec = EnvSpec(pip_packages=("numpy",))
    cache = tmp_path / "envs"
    logs: list[list[str]] = [[], []]
    results: list[str | BaseException] = ["", ""]

    def build(i: int) -> None:
        try:
            results[i] = resolve_environment(spec, cache, log=logs[i].append)
        except BaseException as e:  # surfaced by the asserts below
            results[i] = e

    threads = [threading.Thread(target=build, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert results[0] == results[1], results
    python = results[0]
    assert isinstance(python, str)

    # one builder, one reuser: the flock serialized them
    built = [log for log in logs if any(line.startswith("[env] building") for line in log)]
    reused = [log for log in logs if f"[env] reusing environment {spec.digest()[:12]}" in log]
    assert len(built) == 1 and len(reused) == 1
    assert not any(line.startswith(("[pip]", "[venv]")) for line in reused[0])
    assert any("Requirement already satisfied: numpy" in line for line in built[0]), built[0]

    env_dir = cache / spec.digest()
    assert Path(python) == env_dir / "bin" / "python"
    marker = json.loads((env_dir / MARKER).read_text())
    assert marker["digest"] == spec.digest() and marker["requirements"] == ["numpy"]
    # pip installed nothing into the venv; only our link to the node's own site-packages is there
    assert [p.name for p in _site_packages(env_dir).iterdir()] == ["_cluster_node_packages.pth"]
    prefix, numpy_file = _run_python(
        python, "import sys, numpy; print(sys.prefix); print(numpy.__file__)").splitlines()
    assert Path(prefix) == env_dir
    assert not Path(numpy_file).is_relative_to(env_dir)  # the node's numpy, via system site-packages

    log: list[str] = []
    assert resolve_environment(spec, cache, log=log.append) == python
    assert log == [f"[env] reusing environment {spec.digest()[:12]}"]


def test_bogus_package_fails_clearly_and_leaves_nothing(tmp_path: Path) -> None:
    spec = EnvSpec(pip_packages=("this-package-does-not-exist-zz9",))
    cache = tmp_path / "envs"
    log: list[str] = []
    with pytest.raises(EnvironmentBuildError) as info:
        resolve_environment(spec, cache, log=log.append)
    err = info.value
    assert isinstance(err, ClusterError)
    assert "this-package-does-not-exist-zz9" in str(err)
    assert any("this-package-does-not-exist-zz9" in line for line in err.output_tail)
    assert err.hint is not None and "pip_packages" in err.hint
    assert any(line.startswith("[pip]") for line in log)
    assert not (cache / spec.digest()).exists()
    assert [p.name for p in cache.iterdir()] == [f"{spec.digest()}.lock"]


def test_conda_packages_without_conda_go_through_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))  # no conda, no mamba
    spec = EnvSpec(conda_packages=("numpy", "python=3.11"))
    log: list[str] = []
    python = resolve_environment(spec, tmp_path / "envs", log=log.append)
    assert "[env] conda not found on this node: installing conda_packages ['numpy', 'python=3.11'] with pip" in log
    assert any("'python=3.11' skipped" in line for line in log)
    assert json.loads((Path(python).parent.parent / MARKER).read_text())["requirements"] == ["numpy"]


def test_incomplete_environment_is_rebuilt(tmp_path: Path) -> None:
    spec = EnvSpec(pip_packages=("numpy",))
    env_dir = tmp_path / spec.digest()
    (env_dir / "bin").mkdir(parents=True)
    (env_dir / "half-built").write_text("x")
    log: list[str] = []
    python = resolve_environment(spec, tmp_path, log=log.append)
    assert f"[env] removing incomplete environment {spec.digest()[:12]}" in log
    assert not (env_dir / "half-built").exists() and (env_dir / MARKER).is_file()
    assert _run_python(python, "import numpy; print('ok')") == "ok"


def test_missing_package_is_installed_into_the_venv_only(tmp_path: Path) -> None:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tabulate is installed in the node's Python")
    spec = EnvSpec(pip_packages=("tabulate",))
    log: list[str] = []
    try:
        python = resolve_environment(spec, tmp_path, log=log.append)
    except EnvironmentBuildError as e:
        if any("No matching distribution found for tabulate" in line for line in e.output_tail):
            pytest.skip("no package index with tabulate reachable from here")
        raise
    assert Path(_run_python(python, "import tabulate; print(tabulate.__file__)")).is_relative_to(tmp_path)
    missing = subprocess.run([sys.executable, "-c", "import tabulate"], capture_output=True)
    assert missing.returncode != 0  # the node's own Python is untouched
