"""Azure ML's ``Environment``: the packages and variables a run gets, named and registered in the object store.

    env = Environment.from_pip_requirements("sklearn-env", "requirements.txt")
    env.python.conda_dependencies = CondaDependencies.create(pip_packages=["joblib"], conda_packages=["scikit-learn"])
    env.environment_variables = {"SEED": "1"}
    env.register(ws)                                   # environments/<name>/<version>.json
    src = ScriptRunConfig(source_directory="src", script="train.py", environment=Environment.get(ws, "sklearn-env"))

A node builds it as a cached virtualenv (tasks/environment.py): pip packages as given, conda packages installed
with pip under their PyPI names, the Python version of the node. Docker settings have no meaning here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster import layout, validation
from cluster.errors import NotFoundError, UsageError
from cluster.schema import Record, record
from cluster.validation import Packages, StringMap

if TYPE_CHECKING:
    from cluster.workspace import Workspace


class CondaDependencies:
    """The package lists of an environment (Azure's ``CondaDependencies``); channels are kept but unused."""

    def __init__(self) -> None:
        self._pip: list[str] = []
        self._conda: list[str] = []
        self.channels: list[str] = []

    @classmethod
    def create(cls, pip_packages: Iterable[str] | None = None, conda_packages: Iterable[str] | None = None,
               python_version: str | None = None, pin_sdk_version: bool = True, pip_indexurl: str | None = None,
               **kwargs: Any) -> CondaDependencies:
        validation.check_kwargs("CondaDependencies.create", kwargs, known=())
        if pip_indexurl is not None:
            raise UsageError("CondaDependencies.create: pip_indexurl is not supported",
                             hint="nodes install from the index their pip is configured with")
        deps = cls()
        for p in validation.package_list("pip_packages", list(pip_packages or [])):
            deps.add_pip_package(p)
        for c in validation.package_list("conda_packages", list(conda_packages or [])):
            deps.add_conda_package(c)
        if python_version is not None:
            deps.add_conda_package(f"python={python_version}")  # recorded; nodes run their own Python
        return deps

    def add_pip_package(self, pip_package: str) -> None:
        (p,) = validation.package_list("pip package", [pip_package])
        if p not in self._pip:
            self._pip.append(p)

    def add_conda_package(self, conda_package: str) -> None:
        (c,) = validation.package_list("conda package", [conda_package])
        if c not in self._conda:
            self._conda.append(c)

    def add_channel(self, channel: str) -> None:
        self.channels.append(validation.text("channel", channel))

    def remove_pip_package(self, pip_package: str) -> None:
        self._pip = [p for p in self._pip if _base(p) != _base(pip_package)]

    def remove_conda_package(self, conda_package: str) -> None:
        self._conda = [c for c in self._conda if _base(c) != _base(conda_package)]

    @property
    def pip_packages(self) -> list[str]:
        return list(self._pip)

    @property
    def conda_packages(self) -> list[str]:
        return list(self._conda)

    def __repr__(self) -> str:
        return f"CondaDependencies(pip_packages={self._pip!r}, conda_packages={self._conda!r})"


def _base(spec: str) -> str:
    import re

    return re.split(r"[<>=!~\s\[]", spec.strip(), maxsplit=1)[0].lower()


@dataclass
class PythonSection:
    """``env.python``: its ``conda_dependencies``; ``user_managed_dependencies`` / ``interpreter_path`` are refused
    at submit when set (nodes build the environment themselves)."""

    conda_dependencies: CondaDependencies = field(default_factory=CondaDependencies)
    user_managed_dependencies: bool = False
    interpreter_path: str | None = None


@dataclass
class DockerSection:
    """``env.docker``: accepted so Azure code runs; no meaning here (runs are sandboxed processes, not containers)."""

    enabled: bool = False
    base_image: str | None = None
    base_dockerfile: str | None = None


@record
class EnvironmentDefinition(Record):
    """A registered environment as stored: ``environments/<name>/<version>.json``."""

    __what__ = "environment {name!r}"

    name: str
    version: int | None = None
    pip_packages: Packages = ()
    conda_packages: Packages = ()
    channels: tuple[str, ...] = ()
    environment_variables: StringMap = field(default_factory=dict)

    def __post_init__(self) -> None:
        layout.check_name("environment", self.name)


class Environment:
    """A named set of packages and variables for runs; ``register`` stores it, ``get`` reads it back."""

    def __init__(self, name: str) -> None:
        self.name = layout.check_name("environment", name)
        self.version: int | None = None
        self.python = PythonSection()
        self.docker = DockerSection()
        self.environment_variables: dict[str, str] = {}

    # -- what a run configuration reads (cluster/estimator.py) ------------------------------------------
    @property
    def pip_packages(self) -> tuple[str, ...]:
        self._check_usable()
        return tuple(self.python.conda_dependencies.pip_packages)

    @property
    def conda_packages(self) -> tuple[str, ...]:
        self._check_usable()
        return tuple(self.python.conda_dependencies.conda_packages)

    def _check_usable(self) -> None:
        if self.python.user_managed_dependencies or self.python.interpreter_path:
            raise UsageError(f"environment {self.name!r}: user-managed dependencies / interpreter_path are not "
                             "supported", hint="list the packages instead; a node builds the environment itself")

    # -- constructors -----------------------------------------------------------------------------
    @classmethod
    def from_pip_requirements(cls, name: str, file_path: str | os.PathLike[str]) -> Environment:
        """Packages from a requirements.txt (one requirement a line; comments and blank lines skipped)."""
        path = _readable("file_path", file_path)
        env = cls(name)
        for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            line = raw.split(" #", 1)[0].strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("-"):
                raise UsageError(f"{path}:{n}: pip option {line!r} is not supported",
                                 hint="list requirements only (like 'numpy>=1.26'); inline any -r file")
            env.python.conda_dependencies.add_pip_package(line)
        return env

    @classmethod
    def from_conda_specification(cls, name: str, file_path: str | os.PathLike[str]) -> Environment:
        """Packages from a conda environment.yml: ``dependencies`` (conda packages) and their ``pip:`` list."""
        import yaml

        path = _readable("file_path", file_path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise UsageError(f"{path} is not valid YAML: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("dependencies", []), list):
            raise UsageError(f"{path}: a conda specification is a mapping with a 'dependencies' list")
        env = cls(name)
        deps = env.python.conda_dependencies
        for channel in data.get("channels") or []:
            deps.add_channel(str(channel))
        for item in data.get("dependencies") or []:
            if isinstance(item, dict) and set(item) == {"pip"} and isinstance(item["pip"], list):
                for p in item["pip"]:
                    deps.add_pip_package(str(p))
            elif isinstance(item, str):
                deps.add_conda_package(item)
            else:
                raise UsageError(f"{path}: cannot read dependency {item!r}",
                                 hint="entries are conda package specs or one {'pip': [...]} list")
        for key, value in (data.get("variables") or {}).items():
            env.environment_variables[str(key)] = str(value)
        return env

    # -- serialization ----------------------------------------------------------------------------
    def definition(self) -> EnvironmentDefinition:
        """What :meth:`register` stores (checked: packages, variables)."""
        return EnvironmentDefinition(name=self.name, version=self.version, pip_packages=self.pip_packages,
                                     conda_packages=self.conda_packages,
                                     channels=tuple(self.python.conda_dependencies.channels),
                                     environment_variables=self.environment_variables)

    def to_dict(self) -> dict[str, Any]:
        return self.definition().to_dict()

    @classmethod
    def from_dict(cls, data: Any) -> Environment:
        stored = EnvironmentDefinition.from_dict(data)
        env = cls(stored.name)
        env.version = stored.version
        env.python.conda_dependencies = CondaDependencies.create(pip_packages=stored.pip_packages,
                                                                 conda_packages=stored.conda_packages)
        env.python.conda_dependencies.channels = list(stored.channels)
        env.environment_variables = dict(stored.environment_variables)
        return env

    # -- registry ---------------------------------------------------------------------------------
    def register(self, workspace: Workspace) -> Environment:
        """Store this definition as the next version of its name (the latest version again if nothing changed)."""
        versions = _versions(workspace, self.name)
        body = {k: v for k, v in self.to_dict().items() if k != "version"}
        if versions:
            latest = workspace.store.get_json(layout.environment_key(self.name, versions[-1]))
            if {k: v for k, v in latest.items() if k != "version"} == body:
                self.version = versions[-1]
                return self
        from cluster.model import RESERVE_VERSION  # the models' atomic counter: never shared, never reused

        self.version = int(workspace.redis.eval(RESERVE_VERSION, 1, layout.rk_environment_version(self.name),
                                                versions[-1] if versions else 0))
        workspace.store.put_json(layout.environment_key(self.name, self.version), {**body, "version": self.version})
        return self

    @staticmethod
    def get(workspace: Workspace, name: str, version: int | str | None = None) -> Environment:
        layout.check_name("environment", name)
        versions = _versions(workspace, name)
        if not versions:
            raise NotFoundError(f"no environment named {name!r}",
                                hint="register one with Environment(name).register(ws)")
        if version is None:
            version = versions[-1]
        version = validation.whole_number("environment version", int(version) if isinstance(version, str)
                                          and version.isdigit() else version, minimum=1)
        if version not in versions:
            raise NotFoundError(f"environment {name!r} has no version {version}", hint=f"versions: {versions}")
        return Environment.from_dict(workspace.store.get_json(layout.environment_key(name, version)))

    @staticmethod
    def list(workspace: Workspace) -> dict[str, Environment]:
        """The latest version of every registered environment, by name."""
        return {name: Environment.get(workspace, name) for name in workspace.store.list_dirs("environments/")}

    def __repr__(self) -> str:
        return (f"Environment(name={self.name!r}, version={self.version}, pip_packages={list(self.pip_packages)!r}, "
                f"conda_packages={list(self.conda_packages)!r})")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Environment) and json.dumps(self.to_dict()) == json.dumps(other.to_dict())

    __hash__ = None  # type: ignore[assignment]


def _readable(what: str, value: Any) -> Path:
    path = validation.path_like(what, value)
    if not path.is_file():
        raise UsageError(f"{what} {path} is not a file")
    return path


def _versions(ws: Workspace, name: str) -> list[int]:
    prefix = layout.environment_key(name)
    out = []
    for obj in ws.store.list(prefix):
        stem = obj.key[len(prefix):].removesuffix(".json")
        if stem.isdigit():
            out.append(int(stem))
    return sorted(out)
