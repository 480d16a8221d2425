"""Package a source directory as a content-addressed, deterministic ``.tar.gz`` snapshot.

The digest depends only on the files' relative paths, contents and executable bits, so an
unchanged directory always gets the same digest (and the same bytes on disk), whatever its
mtimes, owner or umask. The node side unpacks it with :func:`tasks.extract.safe_extract`.

What is left out: :data:`DEFAULT_IGNORES`, any directory holding a ``pyvenv.cfg`` (a
virtualenv), the patterns of a ``.clusterignore`` file at the root (gitignore syntax, ``!``
negation included), directory symlinks, sockets, FIFOs and devices. Empty directories are not
recorded. File symlinks are stored as the regular file they point to, if that lies inside
the source directory.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pathspec import GitIgnoreSpec

from cluster.errors import SnapshotError

DEFAULT_IGNORES: tuple[str, ...] = (
    ".git/",
    ".hg/",
    ".svn/",
    "__pycache__/",
    "*.pyc",
    ".ipynb_checkpoints/",
    ".venv/",
    "venv/",
    ".cluster/",
    ".DS_Store",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ruff_cache/",
    "node_modules/",
)
"""Always ignored (gitignore syntax). ``env/`` and any other virtualenv is caught by ``pyvenv.cfg``."""

IGNORE_FILE = ".clusterignore"
DEFAULT_MAX_BYTES = 300 * 1024**2
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class SnapshotFile:
    """One file of a snapshot: posix path relative to the source root, size and content hash."""

    path: str
    size: int
    sha256: str
    executable: bool = False


@dataclass(frozen=True)
class Snapshot:
    """A packaged source directory: its digest, its files and the archive written to disk."""

    digest: str
    files: tuple[SnapshotFile, ...]
    archive: Path
    total_bytes: int

    def manifest(self) -> dict[str, Any]:
        """A JSON-able description: digest, total size and every file's path, size, hash and exec bit."""
        return {
            "digest": self.digest,
            "total_bytes": self.total_bytes,
            "files": [
                {"path": f.path, "size": f.size, "sha256": f.sha256, "executable": f.executable}
                for f in self.files
            ],
        }


def human_size(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def snapshot_digest(entries: list[tuple[str, str, bool]]) -> str:
    """sha256 of the canonical JSON of the sorted ``(path, sha256, executable)`` list."""
    canonical = json.dumps(sorted(entries), separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _load_ignores(root: Path) -> tuple[GitIgnoreSpec, GitIgnoreSpec]:
    """The always-on spec and the user's ``.clusterignore`` spec (empty if there is none)."""
    user: list[str] = []
    ignore_file = root / IGNORE_FILE
    if ignore_file.is_file():
        try:
            user = ignore_file.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise SnapshotError(
                f"cannot read {ignore_file}: {e}",
                hint="make it a readable UTF-8 text file in gitignore syntax",
            ) from e
    return GitIgnoreSpec.from_lines(DEFAULT_IGNORES), GitIgnoreSpec.from_lines(user)


def _collect(root: Path) -> list[tuple[str, Path, os.stat_result]]:
    """Walk ``root`` and return ``(relative posix path, real file, stat)`` of every file to include."""
    defaults, user = _load_ignores(root)
    real_root = root.resolve()

    def ignored(rel: str) -> bool:
        return defaults.match_file(rel) or user.match_file(rel)

    def unreadable(e: OSError) -> None:
        raise SnapshotError(
            f"cannot read directory {e.filename}: {e.strerror}",
            hint=f"fix its permissions, or add it to {IGNORE_FILE}",
        ) from e

    found: list[tuple[str, Path, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        here = Path(dirpath)
        prefix = here.relative_to(root).as_posix()
        prefix = "" if prefix == "." else prefix + "/"
        dirnames[:] = sorted(
            d
            for d in dirnames
            if not (here / d).is_symlink()
            and not ignored(f"{prefix}{d}/")
            and not (here / d / "pyvenv.cfg").exists()
        )
        for name in sorted(filenames):
            rel, path = prefix + name, here / name
            if ignored(rel):
                continue
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise SnapshotError(
                    f"file name {rel!r} in {root} is not valid UTF-8",
                    hint=f"rename it, or add it to {IGNORE_FILE}",
                ) from None
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                target = Path(os.path.realpath(path))
                if not target.exists() or not target.is_relative_to(real_root):
                    what = "is broken" if not target.exists() else f"points outside {root} (to {target})"
                    raise SnapshotError(
                        f"symlink {rel} {what}",
                        hint=f"add {rel} to {IGNORE_FILE}, or replace the link with a copy of the file",
                    )
                st = target.stat()
                path = target
            if stat.S_ISREG(st.st_mode):
                found.append((rel, path, st))
    return sorted(found, key=lambda f: f[0])


def fingerprint(source_dir: str | os.PathLike[str]) -> tuple[object, ...] | None:
    """What identifies the directory's snapshot without reading any file: every included file's path, size,
    mtime, ctime and inode (as git's index does). None when the directory cannot be walked (build_snapshot
    then says why)."""
    root = Path(source_dir)
    try:
        files = _collect(root)
    except (SnapshotError, OSError):
        return None
    return (str(root.resolve()), *((rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode)
                                   for rel, _path, st in files))


class _HashingReader:
    """A read-only file wrapper that hashes what passes through it (so each file is read once)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.hash.update(data)
        return data


def _write_archive(out: BinaryIO, files: list[tuple[str, Path, os.stat_result]]) -> list[SnapshotFile]:
    """Write a deterministic tar.gz of ``files`` (already sorted) to ``out``; return what was stored."""
    stored: list[SnapshotFile] = []
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for rel, path, st in files:
            executable = bool(st.st_mode & stat.S_IXUSR)
            info = tarfile.TarInfo(rel)
            info.size, info.mtime, info.mode = st.st_size, 0, 0o755 if executable else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            try:
                with path.open("rb") as f:
                    reader = _HashingReader(f)
                    tar.addfile(info, reader)
            except OSError as e:
                raise SnapshotError(
                    f"cannot read {rel} ({e}); it may have changed while the snapshot was taken",
                    hint="make sure nothing is writing to the source directory, then submit again",
                ) from e
            stored.append(SnapshotFile(rel, st.st_size, reader.hash.hexdigest(), executable))
    return stored


def build_snapshot(
    source_dir: str | os.PathLike[str],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    work_dir: str | os.PathLike[str] | None = None,
) -> Snapshot:
    """Package ``source_dir`` into ``<work_dir or a new temp dir>/<digest>.tar.gz``.

    Raises :class:`SnapshotError` if the directory is missing or empty, holds a symlink that
    cannot be stored, or its files add up to more than ``max_bytes`` (checked before writing).
    """
    root = Path(source_dir)
    if not root.is_dir():
        raise SnapshotError(
            f"source directory {root} does not exist or is not a directory",
            hint="pass the directory that holds your training script",
        )
    files = _collect(root)
    if not files:
        raise SnapshotError(
            f"source directory {root} has no files to snapshot (all are missing or ignored)",
            hint=f"check the path, and the patterns in {root / IGNORE_FILE} if there is one",
        )
    total = sum(st.st_size for _, _, st in files)
    if total > max_bytes:
        largest = sorted(files, key=lambda f: f[2].st_size, reverse=True)[:5]
        listing = ", ".join(f"{rel} ({human_size(st.st_size)})" for rel, _, st in largest)
        raise SnapshotError(
            f"source directory {root} is {human_size(total)}, over the {human_size(max_bytes)} snapshot "
            f"limit; largest files: {listing}",
            hint=f"add large files to {IGNORE_FILE} (upload data to a datastore instead), "
            "or raise the limit with the max_snapshot_bytes setting",
        )

    own_dir = work_dir is None
    out_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="cluster-snapshot-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".snapshot-", suffix=".tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            stored = _write_archive(out, files)
        digest = snapshot_digest([(f.path, f.sha256, f.executable) for f in stored])
        archive = out_dir / f"{digest}.tar.gz"
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, archive)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        if own_dir:
            out_dir.rmdir()
        raise
    return Snapshot(digest, tuple(stored), archive, sum(f.size for f in stored))
