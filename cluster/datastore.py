"""The default datastore: a bucket of the object store, with Azure ML's upload/download/reference API."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from cluster import validation
from cluster.datareference import DataReference
from cluster.errors import ConflictError, NotFoundError, UsageError
from cluster.objectstore import ObjectStore, file_sha256


@dataclass(frozen=True)
class TransferSummary:
    files: int
    bytes: int
    skipped: int

    def __str__(self) -> str:
        return f"{self.files} file(s), {_human(self.bytes)} transferred, {self.skipped} identical file(s) skipped"


class Datastore:
    """A named datastore backed by one bucket. ``account_name`` is the S3 endpoint, ``container_name`` the bucket."""

    datastore_type = "S3"

    def __init__(self, name: str, store: ObjectStore) -> None:
        self.name = name
        self._store = store

    @property
    def account_name(self) -> str:
        return self._store.settings.s3_endpoint

    @property
    def container_name(self) -> str:
        return self._store.bucket

    def __repr__(self) -> str:
        return f"Datastore(name={self.name!r}, type=S3, endpoint={self.account_name!r}, bucket={self.container_name!r})"

    # -- data references --------------------------------------------------------------------------
    def as_mount(self) -> DataReference:
        return DataReference(self.name, "", "mount")

    def as_download(self, path_on_compute: str | None = None) -> DataReference:
        return DataReference(self.name, "", "download", path_on_compute)

    def path(self, path: str = "") -> DataReference:
        return DataReference(self.name, _norm(path, "path"), "mount")

    def check_reference(self, ref: DataReference) -> None:
        """A data reference must point at a folder with something in it (checked at submit, so a typo in the
        path fails there and then, not later on a node)."""
        if ref.path_on_datastore and not self._store.has_prefix(ref.path_on_datastore + "/"):
            raise NotFoundError(f"data reference {ref}: nothing in datastore {self.name!r} under "
                                f"{ref.path_on_datastore!r}",
                                hint=f"upload it first (ds.upload(src_dir=..., target_path="
                                f"{ref.path_on_datastore!r})) or fix the path; ds.list() shows what exists")

    # -- listing ----------------------------------------------------------------------------------
    def list(self, prefix: str | None = None) -> list[str]:
        return [o.key for o in self._store.list(_norm(prefix or ""))]

    # -- upload -----------------------------------------------------------------------------------
    def upload(self, src_dir: str | os.PathLike[str], target_path: str | None = None, overwrite: bool = False,
               show_progress: bool = True) -> DataReference:
        """Upload every file under ``src_dir`` to ``target_path``; identical files are skipped."""
        root = validation.path_like("upload src_dir", src_dir)
        _norm(target_path or "", "target_path")
        if not root.is_dir():
            raise UsageError(f"upload source {root} is not a directory", hint="pass the folder that holds your files")
        files = sorted(p for p in root.rglob("*") if p.is_file())
        if not files:
            raise UsageError(f"upload source {root} contains no files")
        self.upload_files(files, relative_root=root, target_path=target_path, overwrite=overwrite,
                          show_progress=show_progress)
        return self.path(target_path or "")

    def upload_files(self, files: Iterable[str | os.PathLike[str]], relative_root: str | os.PathLike[str] | None = None,
                     target_path: str | None = None, overwrite: bool = False,
                     show_progress: bool = True) -> TransferSummary:
        """Upload the given files; their paths below ``relative_root`` (default: bare names) are kept."""
        prefix = _norm(target_path or "", "target_path")
        if isinstance(files, str | bytes | os.PathLike):
            raise UsageError("upload_files takes a list of files, got a single path",
                             hint=f"write files=[{str(files)!r}]")
        plan: list[tuple[Path, str]] = []
        for f in files:
            p = validation.path_like("a file to upload", f)
            if not p.is_file():
                raise UsageError(f"cannot upload {p}: not a file")
            try:
                rel = p.relative_to(relative_root).as_posix() if relative_root is not None else p.name
            except ValueError:
                raise UsageError(f"cannot upload {p}: it is not under relative_root {relative_root}") from None
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError(f"cannot upload {ascii(str(p))[1:-1]}: its name is not valid UTF-8",
                                 hint="rename the file (object names in the datastore are UTF-8 text)") from None
            plan.append((p, f"{prefix}/{rel}" if prefix else rel))
        # decide everything before moving a byte, so a conflict leaves the datastore untouched
        todo: list[tuple[Path, str, str]] = []
        skipped = 0
        for path, key in plan:
            sha = file_sha256(path)
            remote = self._store.stat(key)
            if remote is not None and remote.size == path.stat().st_size and remote.sha256 == sha:
                skipped += 1
                continue
            if remote is not None and not overwrite:
                raise ConflictError(
                    f"{self.container_name}/{key} already exists and differs from {path}",
                    hint="pass overwrite=True (CLI: --overwrite) to replace it, or choose another target_path",
                )
            todo.append((path, key, sha))
        total = sum(p.stat().st_size for p, _, _ in todo)
        with _bar(total, f"upload to {self.name}", show_progress) as bar:
            for path, key, sha in todo:
                self._store.put_file(key, path, sha256=sha)
                bar.update(path.stat().st_size)
        summary = TransferSummary(len(todo), total, skipped)
        if show_progress:
            print(f"Uploaded {summary} to {self.container_name}/{prefix}", file=sys.stderr)
        return summary

    # -- download ---------------------------------------------------------------------------------
    def download(self, target_path: str | os.PathLike[str], prefix: str | None = None, overwrite: bool = False,
                 show_progress: bool = True) -> TransferSummary:
        """Download objects under ``prefix`` into local folder ``target_path`` (keys become paths)."""
        dest = validation.local_dir_target("download target_path", target_path)
        root = dest.resolve()
        objects = self._store.list(_norm(prefix or ""))
        if prefix and not objects:
            raise NotFoundError(f"nothing under {self.container_name}/{_norm(prefix)}",
                                hint="list what exists with ds.list() or `cluster data ls`")
        todo = []
        skipped = 0
        for o in objects:
            local = _safe_join(dest, o.key)
            blocker = next((p for p in local.parents if p.is_relative_to(root) and p.exists() and not p.is_dir()),
                           None)
            if blocker is not None:
                raise ConflictError(f"cannot download {self.container_name}/{o.key}: {blocker} is a file where "
                                    "a folder is needed", hint="move that file away, or download somewhere else")
            if local.is_dir():
                raise ConflictError(f"cannot download {self.container_name}/{o.key}: {local} is a folder")
            if local.exists():
                if local.stat().st_size == o.size and self._same(o.key, local):
                    skipped += 1
                    continue
                if not overwrite:
                    raise ConflictError(f"{local} exists and differs from {self.container_name}/{o.key}",
                                        hint="pass overwrite=True to replace local files")
            todo.append((o.key, local, o.size))
        with _bar(sum(t[2] for t in todo), f"download from {self.name}", show_progress) as bar:
            for key, local, size in todo:
                self._store.get_file(key, local)
                bar.update(size)
        return TransferSummary(len(todo), sum(t[2] for t in todo), skipped)

    def _same(self, key: str, local: Path) -> bool:
        info = self._store.stat(key)
        return info is not None and info.sha256 == file_sha256(local)


def _norm(path: str, what: str = "datastore path") -> str:
    if not isinstance(path, str):
        raise UsageError(f"{what} must be a string (a folder in the datastore), got {type(path).__name__}")
    clean = path.replace("\\", "/").strip("/")
    if any(p == ".." for p in clean.split("/")):
        raise UsageError(f"datastore path {path!r} may not contain '..'")
    return clean


def _safe_join(root: Path, key: str) -> Path:
    target = (root / key).resolve()
    if not target.is_relative_to(root.resolve()):
        raise UsageError(f"refusing to write {key!r} outside {root}")
    return target


def _bar(total: int, desc: str, show: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not show,
                file=sys.stderr, leave=False)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
