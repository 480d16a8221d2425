"""Resolving data references on a node.

``as_mount``: a node-level, read-only cache shared by every run on the node (``<cache>/data/<datastore>/``).
Before a run it is validated against the object store (size + etag of every object under the path) and
against what the node wrote (each local file's size, mtime, ctime and inode): only missing, changed or
locally altered files are downloaded, so a second run on the node downloads nothing.
The script gets the cache folder's path; files there are read-only (and, in a sandbox, bound read-only).
The cache's own manifest lives beside the folder (``<cache>/data/<datastore>.manifest.json``), not in it, and
a file under the mounted path that the datastore does not have (planted by an unsandboxed run) is removed and
logged: a mount shows exactly the datastore's files.

``as_download``: a private copy inside the run directory (at ``path_on_compute`` or the datastore path).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cluster.datareference import DataReference
from cluster.errors import UsageError
from cluster.objectstore import ObjectStore

MANIFEST = ".cluster-cache.json"


@dataclass(frozen=True)
class SyncResult:
    path: Path
    downloaded: int
    reused: int
    bytes: int


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sync_mount(store: ObjectStore, ref: DataReference, cache_dir: Path, log: Callable[[str], None]) -> SyncResult:
    """Make ``<cache>/data/<datastore>/`` match the object store under ``ref.path_on_datastore``."""
    root = cache_dir / "data" / ref.datastore
    prefix = ref.path_on_datastore
    with _locked(cache_dir / "data" / f"{ref.datastore}.lock"):
        root.mkdir(parents=True, exist_ok=True)
        manifest_path = cache_dir / "data" / f"{ref.datastore}.manifest.json"
        (root / MANIFEST).unlink(missing_ok=True)  # the manifest's old place, inside the user's folder
        try:
            manifest: dict[str, dict[str, object]] = json.loads(manifest_path.read_text())
        except (OSError, ValueError):
            manifest = {}
        objects = store.list(f"{prefix}/" if prefix else "")
        if prefix and not objects:
            raise UsageError(f"data reference {ref}: nothing in datastore {ref.datastore!r} under {prefix!r}",
                             hint="upload the data first (ds.upload(...)) or fix the path")
        downloaded = reused = nbytes = 0
        for obj in objects:
            local = _inside(root, obj.key)
            known = manifest.get(obj.key)
            if known and known.get("etag") == obj.etag and known.get("size") == obj.size \
                    and known.get("local") == _stamp(local):
                reused += 1
                continue
            if local.exists():
                os.chmod(local, 0o644)
            store.get_file(obj.key, local)
            os.chmod(local, 0o444)
            manifest[obj.key] = {"etag": obj.etag, "size": obj.size, "local": _stamp(local)}
            downloaded += 1
            nbytes += obj.size
            manifest_path.write_text(json.dumps(manifest))
        removed = _remove_extra(root, root / prefix if prefix else root, {o.key for o in objects}, log)
        # deleted from the datastore: forget them too (the manifest only ever describes files that exist)
        listed = {o.key for o in objects}
        gone = [k for k in manifest if (not prefix or k.startswith(f"{prefix}/")) and k not in listed]
        if gone:
            for key in gone:
                del manifest[key]
            manifest_path.write_text(json.dumps(manifest))
        log(f"data {ref}: {downloaded} file(s) downloaded ({nbytes} bytes), {reused} reused from the node cache"
            + (f", {removed} file(s) not in the datastore removed" if removed else ""))
    return SyncResult(root / prefix if prefix else root, downloaded, reused, nbytes)


def _remove_extra(root: Path, folder: Path, wanted: set[str], log: Callable[[str], None]) -> int:
    """Delete every file under ``folder`` whose key (its path relative to ``root``) is not in ``wanted``."""
    removed = 0
    if not folder.is_dir() or folder.is_symlink():
        return 0
    for base, dirs, files in os.walk(folder):
        for name in (*files, *[d for d in dirs if os.path.islink(os.path.join(base, d))]):
            path = Path(base) / name
            if path.relative_to(root).as_posix() not in wanted:
                log(f"data cache: removing {path.relative_to(folder)}, which the datastore does not have")
                path.unlink(missing_ok=True)
                removed += 1
    return removed


def _stamp(path: Path) -> dict[str, int] | None:
    """What the local copy looked like when we wrote it. Any later write, chmod, utime or replacement of the
    file changes its ctime or inode (a script running as root is not stopped by the 0444 mode), so a copy
    that was touched since is downloaded again instead of being handed to the next run."""
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def download_copy(store: ObjectStore, ref: DataReference, run_dir: Path, log: Callable[[str], None]) -> Path:
    """A private copy in the run directory."""
    target_rel = ref.path_on_compute or ref.path_on_datastore or ref.datastore
    target = _inside(run_dir, target_rel)
    prefix = ref.path_on_datastore
    objects = store.list(f"{prefix}/" if prefix else "")
    for obj in objects:
        rel = obj.key[len(prefix) + 1:] if prefix else obj.key
        store.get_file(obj.key, _inside(target, rel))
    target.mkdir(parents=True, exist_ok=True)
    log(f"data {ref}: {len(objects)} file(s) copied into the run directory")
    return target


def _inside(root: Path, rel: str) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise UsageError(f"refusing path {rel!r}: it leaves {root}")
    return path
