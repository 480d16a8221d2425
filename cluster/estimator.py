"""What to run: ``Estimator`` (Azure's, with script_params) and ``ScriptRunConfig`` (with arguments).

Both reduce to a :class:`RunConfiguration`, the one shape the experiment submits.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.datareference import DataReference
from cluster.errors import UsageError

DEFAULT_POOL = "default"


@dataclass(frozen=True)
class RunConfiguration:
    source_directory: Path
    entry_script: str
    arguments: tuple[Any, ...] = ()
    pool: str = DEFAULT_POOL
    pip_packages: tuple[str, ...] = ()
    conda_packages: tuple[str, ...] = ()
    environment_variables: dict[str, str] = field(default_factory=dict)
    max_run_duration_seconds: float | None = None

    def with_arguments(self, extra: Sequence[Any]) -> RunConfiguration:
        from dataclasses import replace

        return replace(self, arguments=(*self.arguments, *extra))


def pool_name(compute_target: Any) -> str:
    """A compute target may be given as a name or as an object with a ``name``."""
    if compute_target is None:
        return DEFAULT_POOL
    if isinstance(compute_target, str):
        return compute_target
    name = getattr(compute_target, "name", None)
    if isinstance(name, str):
        return name
    raise UsageError(f"compute_target must be a pool name or a compute target, not {type(compute_target).__name__}")


def _argument(value: Any) -> Any:
    """Arguments travel as JSON: data references as dicts, everything else as given (str/number/bool)."""
    if isinstance(value, DataReference):
        return value.to_dict()
    if isinstance(value, bool | int | float | str):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalar
        return value.item()
    raise UsageError(f"cannot pass {value!r} ({type(value).__name__}) as a script argument",
                     hint="use strings, numbers, booleans or data references (ds.as_mount())")


def _check_source(source_directory: str | os.PathLike[str], entry_script: str) -> Path:
    src = Path(source_directory)
    if not src.is_dir():
        raise UsageError(f"source_directory {src} is not a directory")
    entry = Path(entry_script)
    if entry.is_absolute() or ".." in entry.parts:
        raise UsageError(f"entry script {entry_script!r} must be a path inside source_directory")
    if not (src / entry).is_file():
        raise UsageError(f"entry script {entry_script!r} not found in {src}",
                         hint="entry_script is relative to source_directory")
    return src


class Estimator:
    """Azure ML's Estimator: a source directory, an entry script and ``script_params``."""

    def __init__(self, source_directory: str | os.PathLike[str], entry_script: str,
                 script_params: Mapping[str, Any] | None = None, compute_target: Any = None,
                 pip_packages: Sequence[str] | None = None, conda_packages: Sequence[str] | None = None,
                 environment_variables: Mapping[str, str] | None = None,
                 max_run_duration_seconds: float | None = None, use_docker: bool = True, **_ignored: Any) -> None:
        self.source_directory = _check_source(source_directory, entry_script)
        self.entry_script = entry_script
        self.script_params = dict(script_params or {})
        self.compute_target = compute_target
        self.pip_packages = tuple(pip_packages or ())
        self.conda_packages = tuple(conda_packages or ())
        self.environment_variables = {str(k): str(v) for k, v in (environment_variables or {}).items()}
        self.max_run_duration_seconds = check_duration(max_run_duration_seconds)

    def run_config(self) -> RunConfiguration:
        args: list[Any] = []
        for key, value in self.script_params.items():
            args.append(str(key))
            if value is not None and value != "":
                args.append(_argument(value))
        return RunConfiguration(self.source_directory, self.entry_script, tuple(args), pool_name(self.compute_target),
                                self.pip_packages, self.conda_packages, self.environment_variables,
                                self.max_run_duration_seconds)

    def __repr__(self) -> str:
        return (f"Estimator(source_directory={str(self.source_directory)!r}, entry_script={self.entry_script!r}, "
                f"compute_target={pool_name(self.compute_target)!r})")


def check_duration(value: Any) -> float | None:
    """``max_run_duration_seconds``: None, or a positive, finite number of seconds (not a string, not a bool)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise UsageError(f"max_run_duration_seconds must be a positive number of seconds, got {value!r}",
                         hint="e.g. max_run_duration_seconds=3600, or None for no limit")
    return float(value)


class ScriptRunConfig:
    """A script with a plain argument list."""

    def __init__(self, source_directory: str | os.PathLike[str], script: str, arguments: Sequence[Any] | None = None,
                 compute_target: Any = None, environment: Any = None,
                 max_run_duration_seconds: float | None = None) -> None:
        self.source_directory = _check_source(source_directory, script)
        self.script = script
        self.arguments = list(arguments or [])
        self.compute_target = compute_target
        self.environment = environment
        self.max_run_duration_seconds = check_duration(max_run_duration_seconds)

    def run_config(self) -> RunConfiguration:
        pip = tuple(self._env_field("pip_packages", ()))
        conda = tuple(self._env_field("conda_packages", ()))
        env_vars = {str(k): str(v) for k, v in dict(self._env_field("environment_variables", {})).items()}
        return RunConfiguration(self.source_directory, self.script, tuple(_argument(a) for a in self.arguments),
                                pool_name(self.compute_target), pip, conda, env_vars, self.max_run_duration_seconds)

    def _env_field(self, name: str, default: Any) -> Any:
        """``environment`` may be a dict or an object with these attributes (Azure's Environment-like)."""
        env = self.environment
        value = env.get(name) if isinstance(env, dict) else getattr(env, name, None)
        return value or default
