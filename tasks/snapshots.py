"""The node's snapshot cache, trusted only when verified, and strict checks of ids read from the broker.

A snapshot's digest (``cluster.snapshot.snapshot_digest``) is the sha256 of its files' paths, contents and
executable bits. A node:

* downloads ``snapshots/<digest>.tar.gz``, extracts it safely (``tasks.extract``) into a fresh directory and
  recomputes the digest from the extracted files: a mismatch (an archive replaced in the object store) fails
  the run and caches nothing;
* keeps the verified tree in ``<cache>/snapshots/<digest>/``, owned by the node, read-only to runs (runs get
  a copy), and records each file's stat (size, mtime, ctime, inode) beside it in ``<digest>.json``;
* on reuse re-checks those stats (cheap; a write, chmod, utime or replacement changes ctime or inode) and
  re-hashes when they differ; an entry that fails is removed, logged and fetched again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from cluster import layout
from cluster.errors import ClusterError, SnapshotError
from cluster.objectstore import ObjectStore
from cluster.snapshot import snapshot_digest
from tasks.extract import safe_extract

__all__ = ["check_digest", "check_run_id", "tree_digest", "verified_snapshot"]

_RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}")
_DIGEST_RE = re.compile(r"[0-9a-f]{64}")


class BadInputError(ClusterError):
    """A value read from the broker or Redis does not have the shape the node expects."""


def check_run_id(run_id: object) -> str:
    """A run id from the broker: letters, digits, '.', '_', '-', no '..' (it becomes a key and a folder name)."""
    if not isinstance(run_id, str) or not _RUN_ID_RE.fullmatch(run_id) or ".." in run_id:
        raise BadInputError(f"refusing run id {str(run_id)[:80]!r} from the broker: not a run id",
                            hint="only ids made by Experiment.submit are executed")
    return run_id


def check_digest(digest: object) -> str:
    """A snapshot digest from a run's spec: 64 lowercase hex digits."""
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise BadInputError(f"refusing snapshot digest {str(digest)[:80]!r}: not a sha256 hex digest",
                            hint="the run's spec was not written by Experiment.submit; submit it again")
    return digest


def tree_digest(root: Path) -> str:
    """The snapshot digest of an extracted tree (regular files only; anything else makes it invalid)."""
    entries: list[tuple[str, str, bool]] = []
    for base, dirs, files in os.walk(root):
        dirs.sort()
        for name in (*dirs, *files):
            st = os.lstat(os.path.join(base, name))
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                return "invalid:" + os.path.join(base, name)
        for name in sorted(files):
            path = os.path.join(base, name)
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(1024 * 1024):
                    h.update(chunk)
            rel = os.path.relpath(path, root).replace(os.sep, "/")
            entries.append((rel, h.hexdigest(), bool(os.lstat(path).st_mode & stat.S_IXUSR)))
    return snapshot_digest(entries)


def _stamps(root: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for base, _dirs, files in os.walk(root):
        for name in (".", *files):
            path = os.path.join(base, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            out[rel] = [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return out


def _intact(target: Path, record: Path, digest: str) -> str | None:
    """None when the cached tree is what we verified, else why not."""
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = None
    if isinstance(known, dict) and known.get("stamps") == _stamps(target):
        return None
    actual = tree_digest(target)
    if actual == digest:
        return None
    return "its files changed since it was verified" if not actual.startswith("invalid:") else \
        f"it holds something that is not a regular file ({actual[8:]})"


def verified_snapshot(store: ObjectStore, digest: str, cache: Path, log: Callable[[str], None],
                      *, max_bytes: int = 2 * 1024**3) -> Path:
    """``<cache>/<digest>/``: the run's source tree, fetched and verified if needed."""
    digest = check_digest(digest)
    target, record = cache / digest, cache / f"{digest}.json"
    if target.is_dir() and not target.is_symlink():
        why = _intact(target, record, digest)
        if why is None:
            log(f"snapshot {digest[:12]} reused from the node cache (verified)")
            return target
        log(f"snapshot {digest[:12]} in the node cache failed verification ({why}): removed, fetching it again")
        _remove(target)
        record.unlink(missing_ok=True)
    elif os.path.lexists(target):
        _remove(target)
    cache.mkdir(parents=True, exist_ok=True)
    os.chmod(cache, 0o700)  # runs get copies; the cache itself is the node's
    archive = cache / f"{digest}.{os.getpid()}.tar.gz"
    tmp = cache / f"{digest}.{os.getpid()}.d"
    try:
        store.get_file(layout.snapshot_key(digest), archive)
        shutil.rmtree(tmp, ignore_errors=True)
        files = safe_extract(archive, tmp, max_bytes=max_bytes)
        actual = tree_digest(tmp)
        if actual != digest:
            raise SnapshotError(f"snapshot {digest[:12]} does not match its digest (the archive in the object "
                                f"store has been replaced: its files hash to {actual[:12]})",
                                hint="submit the run again to upload the snapshot afresh")
        try:
            tmp.rename(target)
        except OSError:  # another node process on this machine got there first
            shutil.rmtree(tmp, ignore_errors=True)
            return verified_snapshot(store, digest, cache, log, max_bytes=max_bytes)
        # stat stamps for the cheap check on reuse (taken after the rename, which changes the root's ctime)
        record.write_text(json.dumps({"digest": digest, "stamps": _stamps(target)}))
    finally:
        archive.unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"snapshot {digest[:12]} fetched and extracted ({len(files)} files), verified against its digest")
    return target


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
