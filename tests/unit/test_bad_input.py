"""Bad input given to the SDK, one row per mistake: the input, where it is given, the error class and a fragment
of its message. No servers: every one of these is caught where it is made, before anything is contacted.

The CLI's rows are in tests/e2e/test_bad_cli.py, the run-time rows (a script that fails in every way a script
can) and the SDK rows that need a cluster in tests/integration/test_bad_runs.py.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cluster import (
    ComputeTarget,
    ConfigError,
    DataReference,
    Estimator,
    Experiment,
    Model,
    NodePool,
    Run,
    ScriptRunConfig,
    UsageError,
    Workspace,
)
from cluster.context import OfflineRun
from cluster.errors import ClusterError, IgnoredArgumentWarning
from cluster.estimator import RunConfiguration
from cluster.settings import Settings
from cluster.sweep import BanditPolicy, HyperDriveConfig, RandomParameterSampling, uniform
from cluster.validation import check_kwargs, string_list


@dataclass(frozen=True)
class Env:
    """What a row may use: a source directory with train.py, a file, a workspace on no server at all."""

    src: Path
    file: Path
    tmp: Path
    ws: Workspace


@dataclass(frozen=True)
class Row:
    input: str  # the mistake, as a user would write it
    where: str  # SDK (this file), CLI or script
    call: Callable[[Env], Any]
    error: type[ClusterError]
    fragment: str


def _est(env: Env, **kw: Any) -> Estimator:
    return Estimator(source_directory=env.src, entry_script="train.py", **kw)


def _src(env: Env, **kw: Any) -> ScriptRunConfig:
    return ScriptRunConfig(source_directory=env.src, script="train.py", **kw)


def _hd(env: Env, **kw: Any) -> HyperDriveConfig:
    args: dict[str, Any] = {"estimator": _est(env), "hyperparameter_sampling": RandomParameterSampling(
        {"--lr": uniform(0, 1)}), "primary_metric_name": "accuracy", "primary_metric_goal": "maximize",
        "max_total_runs": 4, **kw}
    return HyperDriveConfig(**args)


def _run_handle(env: Env) -> Run:
    """A Run handle on no server: enough for checks made before anything is read."""
    return Run(Experiment(env.ws, "x"), "x_1_abc")


def _weird_folder(env: Env) -> Path:
    folder = env.tmp / "weird"
    folder.mkdir()
    (folder / os.fsdecode(b"r\xe9sum\xe9.txt")).write_text("x")
    return folder


def _settings_file(env: Env, content: str) -> Settings:
    path = env.tmp / "config.json"
    path.write_text(content, encoding="utf-8")
    return Settings.from_file(path)


_GOOD = {"redis_url": "redis://:pw@127.0.0.1:1/0", "s3_endpoint": "127.0.0.1:1", "s3_access_key": "a",
         "s3_secret_key": "b"}


ROWS: list[Row] = [
    # ---- run configuration: Estimator -----------------------------------------------------------------------
    Row("Estimator(max_run_duration_seconds=0)", "SDK", lambda e: _est(e, max_run_duration_seconds=0),
        UsageError, "max_run_duration_seconds must be positive"),
    Row("Estimator(max_run_duration_seconds='10')", "SDK", lambda e: _est(e, max_run_duration_seconds="10"),
        UsageError, "max_run_duration_seconds must be a number"),
    Row("Estimator(max_run_duration_seconds=nan)", "SDK", lambda e: _est(e, max_run_duration_seconds=math.nan),
        UsageError, "must be a finite number"),
    Row("Estimator(max_run_duration_seconds=10**400)", "SDK", lambda e: _est(e, max_run_duration_seconds=10**400),
        UsageError, "max_run_duration_seconds is too large"),
    Row("Estimator(max_run_duration_seconds=True)", "SDK", lambda e: _est(e, max_run_duration_seconds=True),
        UsageError, "must be a number"),
    Row("Estimator(pip_packages='numpy')", "SDK", lambda e: _est(e, pip_packages="numpy"),
        UsageError, "pip_packages must be a list of strings, got the string 'numpy'"),
    Row("Estimator(conda_packages=['ok', 3])", "SDK", lambda e: _est(e, conda_packages=["scikit-learn", 3]),
        UsageError, "every entry must be a non-empty string"),
    Row("Estimator(pip_packages=['numpy\\n'])", "SDK", lambda e: _est(e, pip_packages=["numpy\n"]),
        UsageError, "line break"),
    Row("Estimator(pip_packages=['--index-url=http://evil'])", "SDK",
        lambda e: _est(e, pip_packages=["--index-url=http://evil"]), UsageError, "is a pip option, not a package"),
    Row("Estimator(script_param={...}) (a typo)", "SDK", lambda e: _est(e, script_param={"--lr": 1}),
        UsageError, "did you mean 'script_params'"),
    Row("Estimator(entry_scrpt='train.py') (a typo)", "SDK",
        lambda e: Estimator(e.src, "train.py", entry_scrpt="train.py"), UsageError, "did you mean 'entry_script'"),
    Row("Estimator(node_count=2) (distributed: not implemented)", "SDK", lambda e: _est(e, node_count=2),
        UsageError, "unsupported argument(s) node_count"),
    Row("Estimator(script_params={'--lr': nan})", "SDK", lambda e: _est(e, script_params={"--lr": math.nan}),
        UsageError, "NaN or infinite"),
    Row("Estimator(script_params={'--lr': np.float64(inf)})", "SDK",
        lambda e: _est(e, script_params={"--lr": np.float64("inf")}), UsageError, "NaN or infinite"),
    Row("Estimator(script_params=['--lr', 1])", "SDK", lambda e: _est(e, script_params=["--lr", 1]),
        UsageError, "script_params must be a mapping"),
    Row("Estimator(script_params={'--x': object()})", "SDK", lambda e: _est(e, script_params={"--x": object()}),
        UsageError, "cannot pass"),
    Row("Estimator(script_params={3: 'x'})", "SDK", lambda e: _est(e, script_params={3: "x"}),
        UsageError, "script_params key must be a string"),
    Row("Estimator(environment_variables={'A': [1]})", "SDK",
        lambda e: _est(e, environment_variables={"A": [1]}), UsageError, "must be a string or a number"),
    Row("Estimator(environment_variables='A=1')", "SDK", lambda e: _est(e, environment_variables="A=1"),
        UsageError, "environment_variables must be a mapping"),
    Row("Estimator(compute_target=3)", "SDK", lambda e: _est(e, compute_target=3),
        UsageError, "compute_target must be a pool name"),
    Row("Estimator(compute_target='gpu\\n')", "SDK", lambda e: _est(e, compute_target="gpu\n"),
        UsageError, "invalid pool name 'gpu\\n'"),
    Row("Estimator(entry_script='missing.py')", "SDK", lambda e: Estimator(e.src, "missing.py"),
        UsageError, "not found in"),
    Row("Estimator(entry_script='../train.py')", "SDK", lambda e: Estimator(e.src, "../train.py"),
        UsageError, "inside source_directory"),
    Row("Estimator(source_directory=<a file>)", "SDK", lambda e: Estimator(e.file, "train.py"),
        UsageError, "is not a directory"),
    Row("Estimator(source_directory=3)", "SDK", lambda e: Estimator(3, "train.py"),  # type: ignore[arg-type]
        UsageError, "source_directory must be a path"),
    Row("Estimator(source_directory='src') (no entry_script)", "SDK", lambda e: Estimator(source_directory=e.src),
        UsageError, "entry_script is required"),
    Row("ScriptRunConfig(script='train.py') (no source_directory)", "SDK",
        lambda e: ScriptRunConfig(script="train.py"), UsageError, "source_directory is required"),
    Row("Estimator(entry_script=3)", "SDK", lambda e: Estimator(e.src, 3),  # type: ignore[arg-type]
        UsageError, "entry_script must be a string"),
    # ---- run configuration: ScriptRunConfig -----------------------------------------------------------------
    Row("ScriptRunConfig(max_run_duration_seconds=0)", "SDK", lambda e: _src(e, max_run_duration_seconds=0),
        UsageError, "max_run_duration_seconds must be positive"),
    Row("ScriptRunConfig(max_run_duration_seconds='x')", "SDK", lambda e: _src(e, max_run_duration_seconds="x"),
        UsageError, "max_run_duration_seconds must be a number"),
    Row("ScriptRunConfig(environment='myenv')", "SDK", lambda e: _src(e, environment="myenv"),
        UsageError, "not the string 'myenv'"),
    Row("ScriptRunConfig(environment={'pip_package': [...]}) (a typo)", "SDK",
        lambda e: _src(e, environment={"pip_package": ["numpy"]}), UsageError, "did you mean 'pip_packages'"),
    Row("ScriptRunConfig(environment={'pip_packages': 'numpy'})", "SDK",
        lambda e: _src(e, environment={"pip_packages": "numpy"}), UsageError, "got the string 'numpy'"),
    Row("ScriptRunConfig(environment=object())", "SDK", lambda e: _src(e, environment=object()),
        UsageError, "has none of pip_packages"),
    Row("ScriptRunConfig(arguments='--lr 0.1')", "SDK", lambda e: _src(e, arguments="--lr 0.1"),
        UsageError, "arguments must be a list"),
    Row("ScriptRunConfig(arguments=['--lr', nan])", "SDK", lambda e: _src(e, arguments=["--lr", math.nan]),
        UsageError, "arguments[1]"),
    Row("ScriptRunConfig(argument=[...]) (a typo)", "SDK", lambda e: _src(e, argument=["--x"]),
        UsageError, "did you mean 'arguments'"),
    Row("ScriptRunConfig(colour='red')", "SDK", lambda e: _src(e, colour="red"),
        UsageError, "unknown argument(s) 'colour'"),
    Row("ScriptRunConfig(command=['python', 'x.py']) (Azure-only)", "SDK",
        lambda e: _src(e, command=["python", "x.py"]), UsageError, "unsupported argument(s) command"),
    Row("ScriptRunConfig(script='../x.py')", "SDK", lambda e: ScriptRunConfig(e.src, "../x.py"),
        UsageError, "inside source_directory"),
    Row("RunConfiguration(pip_packages='numpy')", "SDK",
        lambda e: RunConfiguration(e.src, "train.py", pip_packages="numpy"),  # type: ignore[arg-type]
        UsageError, "got the string 'numpy'"),
    # ---- names ----------------------------------------------------------------------------------------------
    Row("Experiment(name='mnist\\n')", "SDK", lambda e: Experiment(e.ws, "mnist\n"),
        UsageError, "invalid experiment name 'mnist\\n'"),
    Row("Experiment(name='a/b')", "SDK", lambda e: Experiment(e.ws, "a/b"), UsageError, "invalid experiment name"),
    Row("Experiment(name='')", "SDK", lambda e: Experiment(e.ws, ""), UsageError, "invalid experiment name"),
    Row("Experiment(name='x' * 129)", "SDK", lambda e: Experiment(e.ws, "x" * 129), UsageError, "1-128 characters"),
    Row("Experiment(name='..')", "SDK", lambda e: Experiment(e.ws, ".."), UsageError, "invalid experiment name"),
    Row("Experiment(workspace='ws')", "SDK", lambda e: Experiment("ws", "x"),  # type: ignore[arg-type]
        UsageError, "workspace must be a Workspace"),
    Row("exp.submit(config='train.py')", "SDK", lambda e: Experiment(e.ws, "x").submit("train.py"),
        UsageError, "config must be an Estimator"),
    Row("exp.submit(est, tags={'a': [1]})", "SDK", lambda e: Experiment(e.ws, "x").submit(_est(e), tags={"a": [1]}),
        UsageError, "tags: the value of 'a'"),
    Row("exp.submit(est, tag={...}) (a typo)", "SDK", lambda e: Experiment(e.ws, "x").submit(_est(e), tag={"a": "b"}),
        UsageError, "did you mean 'tags'"),
    Row("Model(ws, 'my model')", "SDK", lambda e: Model(e.ws, "my model"), UsageError, "invalid model name"),
    Row("Model(ws, 'm', version=0)", "SDK", lambda e: Model(e.ws, "m", version=0),
        UsageError, "model version must be at least 1"),
    Row("Model(ws, 'm', version='1')", "SDK", lambda e: Model(e.ws, "m", version="1"),  # type: ignore[arg-type]
        UsageError, "model version must be a whole number"),
    # ---- pools ----------------------------------------------------------------------------------------------
    Row("ComputeTarget(workspace='ws', name='x')", "SDK",
        lambda e: ComputeTarget(workspace="ws", name="x"),  # type: ignore[arg-type]
        UsageError, "workspace must be a Workspace"),
    Row("ComputeTarget(workspace=ws)", "SDK", lambda e: ComputeTarget(workspace=e.ws),
        UsageError, "give the name of an existing compute target"),
    Row("ComputeTarget(workspace=ws, name='gpu\\n')", "SDK", lambda e: ComputeTarget(workspace=e.ws, name="gpu\n"),
        UsageError, "invalid pool name 'gpu\\n'"),
    Row("ComputeTarget.create(ws, 'gpu\\n', cfg)", "SDK",
        lambda e: ComputeTarget.create(e.ws, "gpu\n", NodePool.provisioning_configuration()),
        UsageError, "invalid pool name"),
    Row("ComputeTarget.create(ws, 'p', {'max_nodes': 4})", "SDK",
        lambda e: ComputeTarget.create(e.ws, "p", {"max_nodes": 4}),  # type: ignore[arg-type]
        UsageError, "must come from NodePool.provisioning_configuration"),
    Row("provisioning_configuration(max_node=4) (a typo)", "SDK",
        lambda e: NodePool.provisioning_configuration(max_node=4), UsageError, "did you mean 'max_nodes'"),
    Row("provisioning_configuration(min_nodes=5, max_nodes=2)", "SDK",
        lambda e: NodePool.provisioning_configuration(min_nodes=5, max_nodes=2),
        UsageError, "0 <= min_nodes <= max_nodes"),
    Row("provisioning_configuration(max_nodes=0)", "SDK", lambda e: NodePool.provisioning_configuration(max_nodes=0),
        UsageError, "max_nodes must be at least 1"),
    Row("provisioning_configuration(min_nodes='one')", "SDK",
        lambda e: NodePool.provisioning_configuration(min_nodes="one"),  # type: ignore[arg-type]
        UsageError, "min_nodes must be a whole number"),
    Row("provisioning_configuration(vm_size='huge')", "SDK",
        lambda e: NodePool.provisioning_configuration(vm_size="huge"), UsageError, "unknown node size 'huge'"),
    Row("provisioning_configuration(idle_seconds_before_scaledown=nan)", "SDK",
        lambda e: NodePool.provisioning_configuration(idle_seconds_before_scaledown=math.nan),
        UsageError, "idle_seconds_before_scaledown must be a finite number, got nan"),
    # ---- sweeps ---------------------------------------------------------------------------------------------
    Row("HyperDriveConfig(max_total_runs='10')", "SDK", lambda e: _hd(e, max_total_runs="10"),
        UsageError, "max_total_runs must be a whole number"),
    Row("HyperDriveConfig(max_total_run=10) (a typo)", "SDK", lambda e: _hd(e, max_total_run=10),
        UsageError, "did you mean 'max_total_runs'"),
    Row("HyperDriveConfig(max_total_runs=5000)", "SDK", lambda e: _hd(e, max_total_runs=5000),
        UsageError, "at most 1000"),
    Row("HyperDriveConfig(goal_threshold='0.9')", "SDK", lambda e: _hd(e, goal_threshold="0.9"),
        UsageError, "goal_threshold must be a number"),
    Row("HyperDriveConfig(max_duration_minutes=-1)", "SDK", lambda e: _hd(e, max_duration_minutes=-1),
        UsageError, "max_duration_minutes must be > 0"),
    Row("HyperDriveConfig(primary_metric_goal='bigger')", "SDK", lambda e: _hd(e, primary_metric_goal="bigger"),
        UsageError, "maximize"),
    Row("HyperDriveConfig(hyperparameter_sampling={'--lr': ...})", "SDK",
        lambda e: _hd(e, hyperparameter_sampling={"--lr": uniform(0, 1)}), UsageError, "hyperparameter_sampling"),
    Row("HyperDriveConfig(policy='bandit')", "SDK", lambda e: _hd(e, policy="bandit"), UsageError, "policy must be"),
    Row("HyperDriveConfig(estimator=est(script_params={'--lr': 1}), '--lr' swept)", "SDK",
        lambda e: _hd(e, estimator=_est(e, script_params={"--lr": 1})), UsageError, "both a fixed script argument"),
    Row("BanditPolicy(slack_factor=-1)", "SDK", lambda e: BanditPolicy(slack_factor=-1), UsageError, "slack"),
    Row("uniform(1, 0)", "SDK", lambda e: uniform(1, 0), UsageError, "uniform"),
    Row("uniform(0, 10**400)", "SDK", lambda e: uniform(0, 10**400), UsageError,
        "uniform(): high must be a finite number, got 1000"),
    Row("BanditPolicy(slack_factor=10**400)", "SDK", lambda e: BanditPolicy(slack_factor=10**400),
        UsageError, "slack_factor must be a finite number, got 1000"),
    # ---- datastore and data references ----------------------------------------------------------------------
    Row("ds.download(target_path=<an existing file>)", "SDK",
        lambda e: e.ws.get_default_datastore().download(target_path=e.file),
        UsageError, "is an existing file, not a folder"),
    Row("ds.download(target_path=<a path inside a file>)", "SDK",
        lambda e: e.ws.get_default_datastore().download(target_path=e.file / "sub"), UsageError, "which is a file"),
    Row("ds.upload(src_dir=<a file>)", "SDK", lambda e: e.ws.get_default_datastore().upload(src_dir=e.file),
        UsageError, "is not a directory"),
    Row("ds.upload(src_dir=<an empty folder>)", "SDK",
        lambda e: e.ws.get_default_datastore().upload(src_dir=e.tmp / "empty"), UsageError, "contains no files"),
    Row("ds.upload(target_path='../up')", "SDK",
        lambda e: e.ws.get_default_datastore().upload(src_dir=e.src, target_path="../up"), UsageError, "'..'"),
    Row("ds.upload(src_dir=<a folder with a non-UTF-8 file name>)", "SDK",
        lambda e: e.ws.get_default_datastore().upload(src_dir=_weird_folder(e)), UsageError, "is not valid UTF-8"),
    Row("ds.upload_files(files='train.py')", "SDK",
        lambda e: e.ws.get_default_datastore().upload_files(files=str(e.src / "train.py")),
        UsageError, "takes a list of files"),
    Row("ds.path(3)", "SDK", lambda e: e.ws.get_default_datastore().path(3),  # type: ignore[arg-type]
        UsageError, "path must be a string"),
    Row("ds.path('../secret')", "SDK", lambda e: e.ws.get_default_datastore().path("../secret"),
        UsageError, "may not contain '..'"),
    Row("DataReference(mode='copy')", "SDK", lambda e: DataReference("workspaceblobstore", "", "copy"),
        UsageError, "data reference: mode must be one of 'mount' or 'download', got 'copy'"),
    Row("ds.as_download(path_on_compute='')", "SDK",
        lambda e: e.ws.get_default_datastore().as_download(path_on_compute=""),
        UsageError, "data reference: path_on_compute must not be empty"),
    # ---- metrics (what run.log refuses, offline) ------------------------------------------------------------
    Row("run.log('acc', {'a': 1})", "SDK", lambda e: OfflineRun().log("acc", {"a": 1}),
        UsageError, "cannot log a dict"),
    Row("run.log_list('acc', 'abc')", "SDK", lambda e: OfflineRun().log_list("acc", "abc"),
        UsageError, "log_list takes a list of values, got str"),
    Row("run.download_file('outputs/x', output_file_path=3)", "SDK",
        lambda e: _run_handle(e).download_file("outputs/x", 3),  # type: ignore[arg-type]
        UsageError, "output_file_path must be a path"),
    Row("run.log('', 1)", "SDK", lambda e: OfflineRun().log("", 1), UsageError, "metric name must be a non-empty"),
    # ---- configuration files and credentials ----------------------------------------------------------------
    Row("config.json is not JSON", "SDK", lambda e: _settings_file(e, "{redis_url: x"),
        ConfigError, "cannot read configuration"),
    Row("config.json is a list", "SDK", lambda e: _settings_file(e, "[]"), ConfigError, "is not a JSON object"),
    Row("config.json lacks s3_secret_key", "SDK",
        lambda e: _settings_file(e, json.dumps({k: v for k, v in _GOOD.items() if k != "s3_secret_key"})),
        ConfigError, "lacks s3_secret_key"),
    Row("config.json redis_url='localhost:6379'", "SDK",
        lambda e: _settings_file(e, json.dumps({**_GOOD, "redis_url": "localhost:6379"})),
        ConfigError, "is not a Redis URL"),
    Row("config.json redis_url=6379 (a number)", "SDK",
        lambda e: _settings_file(e, json.dumps({**_GOOD, "redis_url": 6379})), ConfigError, "must be a string"),
    Row("config.json max_snapshot_bytes='lots'", "SDK",
        lambda e: _settings_file(e, json.dumps({**_GOOD, "max_snapshot_bytes": "lots"})),
        ConfigError, "bad configuration"),
    Row("config.json max_snapshot_bytes=-1", "SDK",
        lambda e: _settings_file(e, json.dumps({**_GOOD, "max_snapshot_bytes": -1})),
        ConfigError, "max_snapshot_bytes"),
    Row("config.json s3_endpoint='http://host:9000/path'", "SDK",
        lambda e: Workspace(Settings.from_dict({**_GOOD, "s3_endpoint": "http://host:9000/path"})).store,
        ConfigError, "bad object store endpoint"),
    Row("Workspace.from_config(path=3)", "SDK", lambda e: Workspace.from_config(3),  # type: ignore[arg-type]
        ConfigError, "configuration path must be a file or folder path"),
    Row("Run(exp, 'a/../b')", "SDK", lambda e: Run(Experiment(e.ws, "x"), "a/../b"), UsageError, "invalid run id"),
    Row("Run(exp, None)", "SDK", lambda e: Run(Experiment(e.ws, "x"), None),  # type: ignore[arg-type]
        UsageError, "invalid run id None"),
    Row("run.wait_for_completion(timeout='10')", "SDK",
        lambda e: _run_handle(e).wait_for_completion(timeout="10"), UsageError, "timeout must be a number"),
    Row("run.download_file(None)", "SDK", lambda e: _run_handle(e).download_file(None),  # type: ignore[arg-type]
        UsageError, "file name must be a non-empty string"),
    Row("run.download_files(output_directory=<a file>)", "SDK",
        lambda e: _run_handle(e).download_files(output_directory=e.file), UsageError, "is an existing file"),
    Row("Workspace.from_config(path=<missing>)", "SDK", lambda e: Workspace.from_config(e.tmp / "nowhere.json"),
        ConfigError, "no cluster configuration at"),
    # ---- the validators themselves --------------------------------------------------------------------------
    Row("string_list('pkgs', b'numpy')", "SDK", lambda e: string_list("pkgs", b"numpy"),
        UsageError, "pkgs must be a list of strings"),
    Row("check_kwargs(..., {'maxnodes': 1})", "SDK",
        lambda e: check_kwargs("f", {"maxnodes": 1}, known=("max_nodes", "min_nodes")),
        UsageError, "did you mean 'max_nodes'"),
]


@pytest.fixture
def env(tmp_path: Path) -> Env:
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text("print('hi')\n")
    (tmp_path / "empty").mkdir()
    afile = tmp_path / "a-file.txt"
    afile.write_text("not a folder\n")
    # a workspace on no server at all: every row must fail before anything is contacted
    ws = Workspace(Settings.from_dict(_GOOD, source="test"))
    return Env(src=src, file=afile, tmp=tmp_path, ws=ws)


def test_the_table_is_large_enough() -> None:
    assert len(ROWS) >= 50
    assert len({r.input for r in ROWS}) == len(ROWS), "every row is a different mistake"


@pytest.mark.parametrize("row", ROWS, ids=[r.input for r in ROWS])
def test_bad_input(env: Env, row: Row) -> None:
    with pytest.raises(ClusterError) as info:
        row.call(env)
    assert type(info.value) is row.error, f"{row.input}: {type(info.value).__name__}: {info.value}"
    assert row.fragment in str(info.value), f"{row.input}: {info.value}"
    assert info.value.message.strip(), "every error says what went wrong"


def test_a_good_configuration_still_passes(env: Env) -> None:
    """The checks refuse mistakes, not valid input: numpy scalars, Paths, Azure's harmless defaults."""
    est = _est(env, script_params={"--lr": np.float64(0.5), "--n": np.int64(3), "--flag": ""},
               pip_packages=("numpy",), environment_variables={"SEED": 7}, max_run_duration_seconds=np.int64(60),
               node_count=1, use_gpu=False, compute_target="cpu.cluster-1")
    rc = est.run_config()
    assert rc.arguments == ("--lr", 0.5, "--n", 3, "--flag") and rc.max_run_duration_seconds == 60.0
    assert rc.environment_variables == {"SEED": "7"} and rc.pool == "cpu.cluster-1"
    src = _src(env, arguments=("--x", 1), environment={"pip_packages": ["numpy"]}, resume_from=None)
    assert src.run_config().pip_packages == ("numpy",)
    with pytest.warns(IgnoredArgumentWarning, match="vm_priority"):  # meaningless here: said once, then ignored
        assert NodePool.provisioning_configuration(vm_size="STANDARD_D2_V2", vm_priority="lowpriority").max_nodes == 4
