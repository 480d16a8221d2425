"""Keeping a node's cache (snapshots, environments, mounted data) under a size cap, least recently used first.

The cache is shared by every node process on a machine (the local provider gives them one ``node-cache``), so
an entry in use must never be removed under a run. Each entry has a *use lock* beside it
(``<entry>.use``): a run holds it shared from before the entry is checked or built until the run ended, and
pruning removes an entry only if it gets the lock exclusively without waiting. Recency is the mtime of the
use lock, touched at every use.

Entries (each with its sidecar files)::

    snapshots/<digest>/   + <digest>.json          a verified source tree (tasks/snapshots.py)
    envs/<digest>/        + <digest>.stamps.json   a virtualenv (tasks/environment.py; <digest>.lock is its
                                                   build lock, kept)
    data/<datastore>/     + <datastore>.manifest.json  a mounted datastore (tasks/datacache.py)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

#: the default cap of a node cache, in bytes (a pool's ``max_cache_bytes``)
DEFAULT_MAX_BYTES = 20 * 1024**3

_DIGEST = re.compile(r"[0-9a-f]{64}")
_KINDS = (("snapshots", (".json",)), ("envs", (".stamps.json",)), ("data", (".manifest.json",)))


@dataclass(frozen=True)
class Entry:
    folder: Path
    sidecars: tuple[Path, ...]
    use_lock: Path
    size: int
    last_used: float


@dataclass(frozen=True)
class PruneResult:
    removed: tuple[str, ...]
    freed: int
    size_after: int
    busy: int  # entries over the cap that were in use and kept


def use_lock(folder: Path) -> Path:
    return folder.with_name(folder.name + ".use")


@contextlib.contextmanager
def using(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s use lock shared (and mark it used now) for as long as a run needs the entry."""
    lock = use_lock(folder)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.utime(fd)
        yield
    finally:
        os.close(fd)  # releases the lock


def _size(path: Path) -> int:
    total = 0
    for base, dirs, files in os.walk(path):
        for name in (*files, *dirs):
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(base, name)).st_blocks * 512
    return total


def entries(cache_dir: Path) -> list[Entry]:
    out = []
    for kind, suffixes in _KINDS:
        root = cache_dir / kind
        if not root.is_dir():
            continue
        for folder in root.iterdir():
            if not folder.is_dir() or folder.is_symlink() or folder.name.startswith("."):
                continue
            if kind != "data" and not _DIGEST.fullmatch(folder.name):
                continue  # work in progress (an extraction, a build's private tmp): not an entry
            sidecars = tuple(folder.with_name(folder.name + s) for s in suffixes)
            lock = use_lock(folder)
            try:
                used = lock.stat().st_mtime
            except OSError:
                used = max((p.stat().st_mtime for p in (folder, *sidecars) if p.exists()), default=0.0)
            out.append(Entry(folder, sidecars, lock, _size(folder) + sum(_size(s) if s.is_dir() else
                                                                       (s.stat().st_size if s.exists() else 0)
                                                                       for s in sidecars), used))
    return out


def prune(cache_dir: Path, max_bytes: int, log: Callable[[str], None] = lambda _m: None) -> PruneResult:
    """Remove the least recently used entries that no run holds until the cache fits in ``max_bytes``."""
    found = sorted(entries(cache_dir), key=lambda e: e.last_used)
    size = sum(e.size for e in found)
    removed: list[str] = []
    freed = busy = 0
    for entry in found:
        if size <= max_bytes:
            break
        fd = os.open(entry.use_lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy += 1
                continue
            # the sidecars first: an entry without its record is re-verified or rebuilt, never trusted half-gone
            for sidecar in entry.sidecars:
                sidecar.unlink(missing_ok=True)
            shutil.rmtree(entry.folder, ignore_errors=True)
            # the use lock stays (a few bytes): a run waiting on it holds the same file once we let go, and
            # rebuilds the entry under it
        finally:
            os.close(fd)
        size -= entry.size
        freed += entry.size
        removed.append(f"{entry.folder.parent.name}/{entry.folder.name}")
    if removed:
        log(f"node cache over {max_bytes} bytes: removed {len(removed)} least recently used entr"
            f"{'y' if len(removed) == 1 else 'ies'} ({freed} bytes): {', '.join(removed[:5])}"
            + (" ..." if len(removed) > 5 else ""))
    return PruneResult(tuple(removed), freed, size, busy)
