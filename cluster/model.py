"""The model registry: versioned copies of run outputs under models/<name>/<version>/ in the object store.

Versions start at 1 and increase by one. The next number comes from an atomic Redis counter, reconciled
with the object store (the record), so concurrent registrations never share a version and a wiped Redis
never reuses one.
"""

from __future__ import annotations

import os
from dataclasses import field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import Field

from cluster import layout, luascript, validation
from cluster.errors import ConflictError, NotFoundError, UsageError
from cluster.objectstore import ObjectStore
from cluster.records import now_iso
from cluster.schema import Record, record
from cluster.settings import Settings

if TYPE_CHECKING:
    from cluster.run import Run
    from cluster.workspace import Workspace

MODEL_RECORD = layout.MODEL_RECORD


class ModelStore(Protocol):
    """What reading and updating a model needs of a workspace: the cluster bucket."""

    @property
    def store(self) -> ObjectStore: ...


class _ConfiguredStore:
    """The cluster bucket of the configuration found as ``Workspace.from_config()`` finds it (config.json here or
    in a parent folder, or the CLUSTER_* variables): ``Model.get_model_path`` without a workspace, as Azure's."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def store(self) -> ObjectStore:
        return ObjectStore(self.settings, self.settings.cluster_bucket)


@record
class ModelRecord(Record):
    """One registered model version: ``models/<name>/<version>/model.json``."""

    __what__ = "model {name!r} version {version}"

    name: str
    version: Annotated[int, Field(ge=1)]
    files: dict[str, str]  # relative path -> sha256
    run_id: str | None = None
    experiment: str | None = None
    model_path: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    created_time: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "id": f"{self.name}:{self.version}"}


class Model:
    """``Model(ws, name, version=None)`` loads a registered model (latest version by default)."""

    def __init__(self, workspace: Workspace | ModelStore, name: str, version: int | None = None) -> None:
        if not hasattr(type(workspace), "store"):
            raise UsageError(f"Model: workspace must be a Workspace, got {type(workspace).__name__}")
        self.workspace = workspace
        layout.check_name("model", name)
        if version is not None:
            version = validation.whole_number("model version", version, minimum=1)
        version = version if version is not None else _latest(workspace, name)
        if version is None:
            raise NotFoundError(f"no model named {name!r}", hint="register one with run.register_model(...)")
        try:
            data = workspace.store.get_json(layout.model_prefix(name, version) + MODEL_RECORD)
        except NotFoundError:
            raise NotFoundError(f"model {name!r} has no version {version}",
                                hint=f"versions: {_versions(workspace, name)}") from None
        self._record = ModelRecord.from_dict(data)

    # -- attributes -------------------------------------------------------------------------------
    name = property(lambda self: self._record.name)
    version = property(lambda self: self._record.version)
    id = property(lambda self: f"{self._record.name}:{self._record.version}")
    tags = property(lambda self: dict(self._record.tags))
    description = property(lambda self: self._record.description)
    run_id = property(lambda self: self._record.run_id)
    experiment_name = property(lambda self: self._record.experiment)
    created_time = property(lambda self: self._record.created_time)
    files = property(lambda self: dict(self._record.files))

    def __repr__(self) -> str:
        return f"Model(name={self.name!r}, version={self.version}, run={self.run_id!r})"

    # -- registry ---------------------------------------------------------------------------------
    @classmethod
    def register_from_run(cls, run: Run, model_name: str, model_path: str, *, tags: dict[str, str] | None = None,
                          description: str | None = None) -> Model:
        ws = run.experiment.workspace
        layout.check_name("model", model_name)
        validation.text("model_path", model_path)
        tags = validation.string_map("tags", tags, keys="tag name")
        if description is not None and not isinstance(description, str):
            raise UsageError(f"description must be a string, got {type(description).__name__}")
        rel = model_path.replace("\\", "/").strip("/")
        if not rel or any(p == ".." for p in rel.split("/")):
            raise UsageError(f"model_path {model_path!r} must be a file or folder of the run, e.g. 'outputs/model.pkl'")
        folder = run.files_prefix()  # the committed attempt's folder
        sources = [o for o in ws.store.list(folder + rel) if o.key == folder + rel
                   or o.key.startswith(folder + rel + "/")]
        if not sources:
            raise NotFoundError(f"run {run.id} has no file or folder {model_path!r}",
                                hint=f"its files: {', '.join(run.get_file_names()) or '(none)'}")
        version = _next_version(ws, model_name)
        base = layout.model_prefix(model_name, version)
        files: dict[str, str] = {}
        single = len(sources) == 1 and sources[0].key == folder + rel
        for obj in sources:
            name = Path(rel).name if single else obj.key[len(folder + rel) + 1:]
            ws.store.copy(obj.key, f"{base}{layout.MODEL_FILES_DIR}{name}")
            info = ws.store.stat(f"{base}{layout.MODEL_FILES_DIR}{name}")
            files[name] = (info.sha256 if info and info.sha256 else "")
        record = ModelRecord(name=model_name, version=version, files=files, run_id=run.id,
                             experiment=run.experiment.name, model_path=model_path, tags=dict(tags or {}),
                             description=description, created_time=now_iso())
        ws.store.put_json(base + MODEL_RECORD, record.to_dict())
        return cls(ws, model_name, version)

    @classmethod
    def register(cls, workspace: Workspace, model_path: str | os.PathLike[str], model_name: str,
                 tags: dict[str, str] | None = None, description: str | None = None, **kwargs: Any) -> Model:
        """Register a local file or folder as the next version of ``model_name`` (Azure's ``Model.register``)."""
        from cluster.objectstore import file_sha256

        if not hasattr(type(workspace), "store"):
            raise UsageError(f"Model.register: workspace must be a Workspace, got {type(workspace).__name__}")
        kwargs = validation.warn_ignored("Model.register", kwargs, AZURE_REGISTER_IGNORED)
        validation.check_kwargs("Model.register", kwargs, known=("workspace", "model_path", "model_name", "tags",
                                                                 "description"))
        layout.check_name("model", model_name)
        source = validation.path_like("model_path", model_path)
        tags = validation.string_map("tags", tags, keys="tag name")
        if description is not None and not isinstance(description, str):
            raise UsageError(f"description must be a string, got {type(description).__name__}")
        if source.is_file():
            files = {source.name: source}
        elif source.is_dir():
            files = {f.relative_to(source).as_posix(): f for f in sorted(source.rglob("*"))
                     if f.is_file() and not f.is_symlink()}
            if not files:
                raise UsageError(f"model_path {source} is an empty folder")
        else:
            raise NotFoundError(f"model_path {source} is neither a file nor a folder",
                                hint="give a local file or folder (a run's file: run.register_model(...))")
        version = _next_version(workspace, model_name)
        base = layout.model_prefix(model_name, version)
        digests = {}
        for rel, path in files.items():
            digests[rel] = file_sha256(path)
            workspace.store.put_file(f"{base}{layout.MODEL_FILES_DIR}{rel}", path, sha256=digests[rel])
        record = ModelRecord(name=model_name, version=version, files=digests, run_id=None, experiment=None,
                             model_path=str(model_path), tags=dict(tags or {}), description=description,
                             created_time=now_iso())
        workspace.store.put_json(base + MODEL_RECORD, record.to_dict())
        return cls(workspace, model_name, version)

    @staticmethod
    def get_model_path(model_name: str, version: int | None = None,
                       _workspace: Workspace | ModelStore | None = None) -> str:
        """A local path of the model's files: downloaded once into ``./azureml-models/<name>/<version>/`` (as Azure
        does outside a deployment). The file itself when the model is one file."""
        if _workspace is None:
            _workspace = _ConfiguredStore(Settings.discover())
        model = Model(_workspace, model_name, version)
        target = Path("azureml-models") / model.name / str(model.version)
        paths = [target / rel for rel in model.files]
        if not all(p.is_file() for p in paths):
            model.download(target, exist_ok=True)
        return str(paths[0]) if len(paths) == 1 else str(target)

    def add_tags(self, tags: dict[str, str]) -> None:
        """Add or change tags of this version."""
        self._update(tags={**self._record.tags, **validation.string_map("tags", tags, keys="tag name")})

    def remove_tags(self, tags: list[str]) -> None:
        self._update(tags={k: v for k, v in self._record.tags.items() if k not in set(tags)})

    def add_properties(self, properties: dict[str, str]) -> None:
        self.add_tags(properties)  # a model's properties are its tags here (docs/porting.md)

    def update(self, description: str | None = None, tags: dict[str, str] | None = None) -> None:
        changes: dict[str, Any] = {}
        if description is not None:
            changes["description"] = validation.text("description", description, empty=True)
        if tags is not None:
            changes["tags"] = validation.string_map("tags", tags, keys="tag name")
        self._update(**changes)

    def _update(self, **changes: Any) -> None:
        from dataclasses import replace

        self._record = replace(self._record, **changes)
        self.workspace.store.put_json(layout.model_prefix(self.name, self.version) + MODEL_RECORD,
                                      self._record.to_dict())

    def delete(self) -> None:
        """Delete this version (its record first, so it is gone for readers at once, then its files)."""
        base = layout.model_prefix(self.name, self.version)
        self.workspace.store.delete(base + MODEL_RECORD)
        for obj in self.workspace.store.list(base):
            self.workspace.store.delete(obj.key)

    @staticmethod
    def list(workspace: Workspace, name: str | None = None) -> list[Model]:
        if name is not None:
            layout.check_name("model", name)
        names = [name] if name else workspace.store.list_dirs(layout.MODELS_PREFIX)
        out = []
        for n in names:
            for v in _versions(workspace, n):
                out.append(Model(workspace, n, v))
        return out

    def download(self, target_dir: str | os.PathLike[str] = ".", exist_ok: bool = False) -> str:
        """Copy the model's files into ``target_dir``; returns the path (the file if there is only one)."""
        target = validation.local_dir_target("model download target_dir", target_dir)
        base = layout.model_prefix(self.name, self.version) + layout.MODEL_FILES_DIR
        paths = []
        for rel in self.files:
            dest = target / rel
            if dest.exists() and not exist_ok:
                raise ConflictError(f"{dest} already exists", hint="pass exist_ok=True to overwrite")
            self.workspace.store.get_file(base + rel, dest)
            paths.append(dest)
        return str(paths[0]) if len(paths) == 1 else str(target)


#: Azure's Model.register arguments with no effect here: one warning each, then ignored
AZURE_REGISTER_IGNORED = ("properties", "model_framework", "model_framework_version", "datasets",
                          "sample_input_dataset", "sample_output_dataset", "resource_configuration",
                          "child_paths", "description_extended", "upload_pinned", "asset_id")


def _versions(ws: Workspace | ModelStore, name: str, *, complete: bool = True) -> list[int]:
    """Registered versions. A version is complete once its model.json is written (after its files are copied):
    readers see only those, so a registration in progress is never half-visible. ``complete=False`` also counts
    versions being registered (for reserving the next number)."""
    prefix = layout.model_prefix(name)
    if not complete:
        return sorted(int(v) for v in ws.store.list_dirs(prefix) if v.isdigit())
    found = set()
    for obj in ws.store.list(prefix):
        parts = obj.key[len(prefix):].split("/")
        if len(parts) == 2 and parts[0].isdigit() and parts[1] == MODEL_RECORD:
            found.add(int(parts[0]))
    return sorted(found)


def _latest(ws: Workspace | ModelStore, name: str) -> int | None:
    versions = _versions(ws, name)
    return versions[-1] if versions else None


#: reserve the next version of a model (or an environment): an atomic counter reconciled with the store
RESERVE_VERSION = luascript.read("cluster", "reserve_model_version.lua")


def _next_version(ws: Workspace, name: str) -> int:
    """Atomic: the counter never falls below what the object store already holds."""
    stored = max(_versions(ws, name, complete=False), default=0)
    return int(ws.redis.eval(RESERVE_VERSION, 1, layout.rk_model_version(name), stored))
