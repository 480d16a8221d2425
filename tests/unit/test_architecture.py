"""The import graph: the SDK imports no Celery and no worker code, and sibling modules import no cycle
(contracts in .importlinter, checked by import-linter)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[2]


def _files(pattern: str) -> list[Path]:
    return [*(ROOT / "cluster").rglob(pattern), *(ROOT / "tasks").rglob(pattern)]


def test_import_contracts_are_kept(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT))
    assert lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True) == 0


def test_a_client_that_submits_and_reads_loads_no_celery() -> None:
    code = (
        "import sys, cluster, cluster.workspace, cluster.experiment, cluster.run, cluster.model, cluster.sweep, "
        "cluster.controller, cluster.cli\n"
        "from cluster.testing import memory_workspace\n"
        "ws = memory_workspace()\n"
        "ws.enqueue('r1', 'cpu')\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('celery', 'kombu', 'tasks'))\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr


def test_the_default_broker_is_the_worker_packages_celery_broker() -> None:
    from cluster.broker import DEFAULT_BROKER, Broker
    from cluster.broker import load as load_broker
    from cluster.testing import fake_redis, fake_settings

    broker = load_broker(DEFAULT_BROKER, fake_settings(), fake_redis())
    assert isinstance(broker, Broker)
    assert type(broker).__module__ == "tasks.broker"
    assert broker.queued_run_ids("cpu") == set() and broker.unacked_run_ids() == set()


def test_a_broker_that_cannot_be_loaded_is_a_config_error() -> None:
    import pytest

    from cluster.broker import load as load_broker
    from cluster.errors import ConfigError
    from cluster.testing import fake_redis, fake_settings

    with pytest.raises(ConfigError, match="cannot load the broker"):
        load_broker("no_such_module:Broker", fake_settings(), fake_redis())
    with pytest.raises(ConfigError, match="is not a broker"):
        load_broker("operator:is_", fake_settings(), fake_redis())
    with pytest.raises(ConfigError, match="is not a broker factory"):
        load_broker("cluster.settings:Settings", fake_settings(), fake_redis())


def test_no_module_imports_another_modules_private_names() -> None:
    import ast

    offenders = []
    for path in sorted(_files("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("cluster", "tasks"):
                offenders += [f"{path.relative_to(ROOT)}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


def test_every_lua_script_is_package_data_and_runs_on_redis() -> None:
    import fnmatch
    import tomllib

    from cluster import luascript
    from cluster.testing import fake_redis

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    scripts = sorted(p.relative_to(ROOT) for p in _files("*.lua"))
    assert scripts, "no .lua file found"
    r = fake_redis()
    for path in scripts:
        package = ".".join(path.parent.parent.parts)
        assert any(fnmatch.fnmatch(str(path.relative_to(path.parent.parent)), pattern)
                   for pattern in data.get(package, ())), f"{path} is not package data of {package}"
        r.script_load(luascript.read(package, path.name))  # compiles


def test_no_lua_inline_in_python_modules() -> None:
    inline = sorted(str(p.relative_to(ROOT)) for p in _files("*.py") if "redis.call(" in p.read_text(encoding="utf-8"))
    assert inline == []


def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """No import-order trap: each module imports on its own (the cluster's modules forgotten before each)."""
    names = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                   for p in _files("*.py") if "__main__" not in p.name)
    def check(chunk: list[str]) -> subprocess.Popen[str]:
        code = (
            "import importlib, sys\n"
            f"names = {chunk!r}\n"
            "failed = []\n"
            "for name in names:\n"
            "    for m in [m for m in sys.modules if m.split('.')[0] in ('cluster', 'tasks')]:\n"
            "        del sys.modules[m]\n"
            "    try:\n"
            "        importlib.import_module(name)\n"
            "    except Exception as e:\n"
            "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
            "assert not failed, failed\n"
        )
        return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                "HOME": str(Path.home())})

    procs = [check(names[i::2]) for i in range(2)]  # two interpreters side by side: the unit tier's time
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err[-3000:]
