"""What to run: ``Estimator`` (Azure's, with script_params) and ``ScriptRunConfig`` (with arguments).

Both reduce to a :class:`RunConfiguration`, the one shape the experiment submits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator

from cluster import validation
from cluster.errors import UsageError
from cluster.schema import Record, record

DEFAULT_POOL = "default"

#: Azure ML Estimator arguments this cluster cannot honour, with the value that means "not used": that value is
#: accepted, any other is an error (the run would compute something else than asked: several nodes, ...).
AZURE_ESTIMATOR_ONLY: dict[str, Any] = {
    "node_count": 1, "process_count_per_node": 1, "distributed_backend": None, "distributed_training": None,
    "inputs": None, "resume_from": None,
}
#: Azure ML Estimator arguments with no meaning here (the VM, Docker, the Azure image): one warning each, ignored.
AZURE_ESTIMATOR_IGNORED = ("vm_size", "vm_priority", "use_gpu", "custom_docker_base_image", "custom_docker_image",
                           "image_registry_details", "user_managed", "shm_size", "framework_version",
                           "source_directory_data_store")
#: The same for ScriptRunConfig.
AZURE_SCRIPT_RUN_ONLY: dict[str, Any] = {
    "run_config": None, "distributed_job_config": None, "resume_from": None, "command": None,
}
AZURE_SCRIPT_RUN_IGNORED = ("docker_runtime_config", "_telemetry_values")
ENVIRONMENT_FIELDS = ("pip_packages", "conda_packages", "environment_variables")


@record
class RunConfiguration(Record):
    """The one shape every path submits (Estimator, ScriptRunConfig, a stored sweep's ``run_config``).

    A typed record (cluster/schema.py): the fields are checked on construction with the SDK's validators, and
    ``to_dict`` / ``from_dict`` are its JSON form (stored in a sweep spec)."""

    __what__ = "run configuration"

    source_directory: Path
    entry_script: str
    arguments: tuple[Any, ...] = ()
    pool: Annotated[str, validation.field_check(validation.name)] = DEFAULT_POOL
    pip_packages: validation.Packages = ()
    conda_packages: validation.Packages = ()
    environment_variables: Annotated[
        dict[str, str], validation.field_check(lambda what, v: validation.string_map(what, v, keys="variable name"))
    ] = field(default_factory=dict)
    max_run_duration_seconds: Annotated[float | None, BeforeValidator(lambda v: _max_seconds(v))] = None

    def with_arguments(self, extra: Sequence[Any]) -> RunConfiguration:
        from dataclasses import replace

        return replace(self, arguments=(*self.arguments, *extra))


def _max_seconds(value: Any) -> float | None:
    return None if value is None else validation.positive_number("max_run_duration_seconds", value)


def pool_name(compute_target: Any) -> str:
    """A compute target may be given as a name or as an object with a ``name``."""
    if compute_target is None:
        return DEFAULT_POOL
    if isinstance(compute_target, str):
        return validation.name("pool", compute_target)
    name = getattr(compute_target, "name", None)
    if isinstance(name, str):
        return validation.name("pool", name)
    raise UsageError(f"compute_target must be a pool name or a compute target, not {type(compute_target).__name__}",
                     hint="e.g. compute_target='cpucluster' or compute_target=ws.compute_targets['cpucluster']")


def _argument(value: Any, what: str = "script argument") -> Any:
    """Arguments travel as JSON: data references as dicts, everything else as given (str/number/bool)."""
    return validation.script_value(what, value)


def _check_source(source_directory: Any, entry_script: Any, what: str = "entry_script") -> tuple[Path, str]:
    """The source directory and the entry script (relative to it), checked."""
    for name, value in (("source_directory", source_directory), (what, entry_script)):
        if value is None:
            raise UsageError(f"{name} is required",
                             hint="e.g. Estimator(source_directory='./src', entry_script='train.py') or "
                             "ScriptRunConfig(source_directory='./src', script='train.py')")
    src = validation.path_like("source_directory", source_directory)
    if isinstance(entry_script, os.PathLike):
        entry_script = os.fspath(entry_script)
    validation.text(what, entry_script)
    if not src.is_dir():
        raise UsageError(f"source_directory {src} is not a directory")
    entry = Path(entry_script)
    if entry.is_absolute() or ".." in entry.parts:
        raise UsageError(f"entry script {entry_script!r} must be a path inside source_directory")
    if not (src / entry).is_file():
        raise UsageError(f"entry script {entry_script!r} not found in {src}",
                         hint=f"{what} is relative to source_directory")
    return src, entry_script


def _script_params(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise UsageError(f"script_params must be a mapping of argument name -> value, got {type(value).__name__}",
                         hint="e.g. script_params={'--regularization': 0.8}; use ScriptRunConfig(arguments=[...]) "
                         "for a plain list")
    out: dict[str, Any] = {}
    for key, v in value.items():
        validation.text("script_params key", key)
        if not (v is None or (isinstance(v, str) and v == "")):
            _argument(v, f"script_params[{key!r}]")
        out[key] = v
    return out


def script_arguments(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Sequence):
        raise UsageError(f"arguments must be a list, got {type(value).__name__} {value!r:.60}",
                         hint="e.g. arguments=['--lr', 0.1]; for a name -> value mapping use Estimator(script_params=)")
    items = list(value)
    for i, a in enumerate(items):
        _argument(a, f"arguments[{i}]")
    return items


def _environment(value: Any, what: str = "environment") -> dict[str, Any]:
    """``environment`` is an :class:`~cluster.environment.Environment`, a dict or an Environment-like object with
    pip_packages / conda_packages / environment_variables; anything else (a bare name, say) is refused."""
    if value is None:
        value = {}
    if isinstance(value, str | bytes):
        raise UsageError(f"{what} must be an Environment or a dict, not the string {value!r:.60}",
                         hint=f"look a registered one up by name: {what}=Environment.get(ws, {value!r:.40}); or "
                         "give the packages, e.g. {'pip_packages': ['numpy'], 'environment_variables': {'SEED': '1'}}")
    if isinstance(value, Mapping):
        validation.check_kwargs("environment", value, known=ENVIRONMENT_FIELDS, noun="key")
        fields = dict(value)
    else:
        fields = {k: getattr(value, k) for k in ENVIRONMENT_FIELDS if hasattr(value, k)}
        if not fields:
            raise UsageError(f"environment {type(value).__name__} has none of {', '.join(ENVIRONMENT_FIELDS)}",
                             hint="pass a dict, e.g. environment={'pip_packages': ['numpy']}")
    return {
        "pip_packages": validation.package_list("environment pip_packages", fields.get("pip_packages")),
        "conda_packages": validation.package_list("environment conda_packages", fields.get("conda_packages")),
        "environment_variables": validation.string_map("environment environment_variables",
                                                       fields.get("environment_variables"), keys="variable name"),
    }


def _package_files(source_directory: Path, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Azure's ``pip_requirements_file`` / ``conda_dependencies_file`` (and their ``*_path`` spellings): read now,
    relative to source_directory as in Azure (else to the current folder)."""
    from cluster.environment import Environment

    pip: list[str] = []
    conda: list[str] = []
    for key in _ESTIMATOR_FILES:
        value = kwargs.get(key)
        if value is None:
            continue
        path = validation.path_like(key, value)
        if not path.is_absolute() and (source_directory / path).is_file():
            path = source_directory / path
        env = (Environment.from_pip_requirements("estimator", path) if key.startswith("pip")
               else Environment.from_conda_specification("estimator", path))
        pip += env.pip_packages
        conda += env.conda_packages
    return {"pip_packages": tuple(pip), "conda_packages": tuple(conda), "environment_variables": {}}


class Estimator:
    """Azure ML's Estimator: a source directory, an entry script and ``script_params``."""

    def __init__(self, source_directory: str | os.PathLike[str] | None = None, entry_script: str | None = None,
                 script_params: Mapping[str, Any] | None = None, compute_target: Any = None,
                 pip_packages: Sequence[str] | None = None, conda_packages: Sequence[str] | None = None,
                 environment_variables: Mapping[str, str] | None = None,
                 max_run_duration_seconds: float | None = None, use_docker: bool = True, **kwargs: Any) -> None:
        kwargs = validation.warn_ignored("Estimator", kwargs, AZURE_ESTIMATOR_IGNORED)
        validation.check_kwargs("Estimator", kwargs, known=(*_ESTIMATOR_ARGS, *_ESTIMATOR_FILES),
                                ignored=AZURE_ESTIMATOR_ONLY)
        self.source_directory, self.entry_script = _check_source(source_directory, entry_script)
        self.script_params = _script_params(script_params)
        pool_name(compute_target)
        self.compute_target = compute_target
        env = _environment(kwargs.get("environment_definition"), what="environment_definition")
        files = _package_files(self.source_directory, kwargs)
        self.pip_packages = (*env["pip_packages"], *files["pip_packages"],
                             *validation.package_list("pip_packages", pip_packages))
        self.conda_packages = (*env["conda_packages"], *files["conda_packages"],
                               *validation.package_list("conda_packages", conda_packages))
        self.environment_variables = {**env["environment_variables"], **files["environment_variables"],
                                      **validation.string_map("environment_variables", environment_variables,
                                                              keys="variable name")}
        self.environment_definition = kwargs.get("environment_definition")
        self.max_run_duration_seconds = _max_seconds(max_run_duration_seconds)

    def run_config(self) -> RunConfiguration:
        args: list[Any] = []
        for key, value in self.script_params.items():
            args.append(str(key))
            if not (value is None or (isinstance(value, str) and value == "")):
                args.append(_argument(value))
        return RunConfiguration(self.source_directory, self.entry_script, tuple(args), pool_name(self.compute_target),
                                self.pip_packages, self.conda_packages, self.environment_variables,
                                self.max_run_duration_seconds)

    def __repr__(self) -> str:
        return (f"Estimator(source_directory={str(self.source_directory)!r}, entry_script={self.entry_script!r}, "
                f"compute_target={pool_name(self.compute_target)!r})")


class ScriptRunConfig:
    """A script with a plain argument list."""

    def __init__(self, source_directory: str | os.PathLike[str] | None = None, script: str | None = None,
                 arguments: Sequence[Any] | None = None,
                 compute_target: Any = None, environment: Any = None,
                 max_run_duration_seconds: float | None = None, **kwargs: Any) -> None:
        kwargs = validation.warn_ignored("ScriptRunConfig", kwargs, AZURE_SCRIPT_RUN_IGNORED)
        validation.check_kwargs("ScriptRunConfig", kwargs, known=_SCRIPT_RUN_ARGS, ignored=AZURE_SCRIPT_RUN_ONLY)
        self.source_directory, self.script = _check_source(source_directory, script, "script")
        self.arguments = script_arguments(arguments)
        pool_name(compute_target)
        self.compute_target = compute_target
        self._env = _environment(environment)
        self.environment = environment
        self.max_run_duration_seconds = _max_seconds(max_run_duration_seconds)

    def run_config(self) -> RunConfiguration:
        return RunConfiguration(self.source_directory, self.script, tuple(_argument(a) for a in self.arguments),
                                pool_name(self.compute_target), self._env["pip_packages"], self._env["conda_packages"],
                                self._env["environment_variables"], self.max_run_duration_seconds)


_ESTIMATOR_ARGS = ("source_directory", "entry_script", "script_params", "compute_target", "pip_packages",
                   "conda_packages", "environment_variables", "max_run_duration_seconds", "use_docker",
                  "environment_definition")
_ESTIMATOR_FILES = ("pip_requirements_file", "pip_requirements_file_path", "conda_dependencies_file",
                    "conda_dependencies_file_path")
_SCRIPT_RUN_ARGS = ("source_directory", "script", "arguments", "compute_target", "environment",
                    "max_run_duration_seconds")
