"""Unpack a snapshot archive on a node, trusting nothing in it.

Only regular files and directories are created, with modes 0o644 / 0o755. The archive is
unpacked member by member into a temporary sibling of ``dest`` that is renamed to ``dest``
only once every member passed, so a rejected archive leaves neither ``dest`` nor anything
outside it behind.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path
from typing import Any

from cluster.errors import SnapshotError

_CHUNK = 1024 * 1024
#: the largest single read tarfile may make: a member's data is read in _CHUNK pieces, so only a header (a PAX
#: extended header, a GNU long name) asks for more -- and tarfile would hold it in memory whole
MAX_HEADER_BYTES = 4 * 1024 * 1024
#: uncompressed bytes per compressed byte beyond which an archive is a decompression bomb, not source code
MAX_RATIO = 200
_RATIO_FLOOR = 64 * 1024 * 1024  # below this many bytes, any ratio is fine (tiny archives of zeros are harmless)


class _BoundedReads:
    """A read-only file for tarfile that refuses any single read larger than ``MAX_HEADER_BYTES``."""

    def __init__(self, raw: Any, archive: Path) -> None:
        self.raw, self.archive = raw, archive

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > MAX_HEADER_BYTES:
            raise SnapshotError(f"refusing to extract {self.archive}: a header asks for {size} bytes at once "
                                f"(over {MAX_HEADER_BYTES}): an oversized PAX or GNU long-name header", hint=_HINT)
        return bytes(self.raw.read(size))

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self.raw.seek(offset, whence))

    def tell(self) -> int:
        return int(self.raw.tell())
_HINT = "the snapshot is corrupt or was not made by build_snapshot; submit the run again"


def _reject(archive: Path, member: str, reason: str) -> SnapshotError:
    return SnapshotError(f"refusing to extract {archive}: member {member!r} {reason}", hint=_HINT)


def _member_path(archive: Path, member: tarfile.TarInfo) -> str:
    """The member's normalised relative posix path, or an error if it could escape ``dest``."""
    name = member.name
    if name.startswith("/"):
        raise _reject(archive, name, "has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _reject(archive, name, "has a '..' path component")
    return "/".join(parts)


def _check_type(archive: Path, member: tarfile.TarInfo) -> None:
    """Accept only regular files and directories."""
    if member.isreg() or member.isdir():
        return
    kind = (
        "is a symlink" if member.issym()
        else "is a hardlink" if member.islnk()
        else "is a device" if member.ischr() or member.isblk()
        else "is a FIFO" if member.isfifo()
        else f"has unsupported type {member.type!r}"
    )
    raise _reject(archive, member.name, kind)


def _extract_into(
    tar: tarfile.TarFile, archive: Path, root: Path, max_members: int, max_bytes: int
) -> list[str]:
    """Extract every member of ``tar`` under ``root`` (a fresh, empty directory). ``max_bytes`` is the smaller of
    the size limit and ``MAX_RATIO`` times the archive's own size (a decompression bomb stops early)."""
    compressed = os.path.getsize(archive)
    max_bytes = min(max_bytes, max(_RATIO_FLOOR, MAX_RATIO * compressed))
    real_root = os.path.realpath(root)
    seen: set[str] = set()
    files: list[str] = []
    total = 0
    for count, member in enumerate(tar, start=1):
        if count > max_members:
            raise _reject(archive, member.name, f"is past the limit of {max_members} members")
        rel = _member_path(archive, member)
        _check_type(archive, member)
        if not rel:
            if member.isdir():
                continue  # "." itself
            raise _reject(archive, member.name, "has an empty path")
        if rel in seen:
            raise _reject(archive, member.name, "is a duplicate")
        seen.add(rel)
        target = root / rel
        resolved = os.path.realpath(target)
        if os.path.commonpath([real_root, resolved]) != real_root:
            raise _reject(archive, member.name, "resolves outside the destination")
        try:
            if member.isdir():
                target.mkdir(mode=0o755, parents=True, exist_ok=True)
                target.chmod(0o755)
                continue
            if total + member.size > max_bytes:
                raise _reject(archive, member.name, f"takes the total size over the {max_bytes}-byte limit")
            target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            mode = 0o755 if member.mode & 0o100 else 0o644
            src = tar.extractfile(member)
            assert src is not None  # a regular file always has a data stream
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out, src:
                while chunk := src.read(_CHUNK):
                    total += len(chunk)
                    if total > max_bytes:
                        raise _reject(
                            archive, member.name, f"takes the total size over the {max_bytes}-byte limit"
                        )
                    out.write(chunk)
                os.fchmod(out.fileno(), mode)
        except (FileExistsError, NotADirectoryError, IsADirectoryError) as e:
            raise _reject(archive, member.name, f"clashes with an earlier member ({e.strerror})") from e
        files.append(rel)
    return files


def safe_extract(
    archive: Path, dest: Path, *, max_members: int = 20000, max_bytes: int = 2 * 1024**3
) -> list[str]:
    """Extract the tar(.gz) ``archive`` into the new directory ``dest``; return the files' relative paths.

    Raises :class:`SnapshotError` (naming the member and the reason) for absolute paths, ``..``
    components, links, devices, FIFOs, duplicates, members resolving outside ``dest``, more than
    ``max_members`` members, more than ``max_bytes`` uncompressed bytes in total (the node passes the
    submit cap, ``max_snapshot_bytes``), more than ``MAX_RATIO`` times the archive's size (above 64 MiB),
    a header larger than ``MAX_HEADER_BYTES`` (PAX, GNU long names), or if ``dest`` already exists.
    """
    archive, dest = Path(archive), Path(dest)
    if os.path.lexists(dest):
        raise SnapshotError(
            f"cannot extract {archive}: destination {dest} already exists",
            hint="extract into a new directory, or remove the old one first",
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        try:
            with open(archive, "rb") as fh:
                gzipped = fh.read(2) == b"\x1f\x8b"
            with (gzip.open(archive, "rb") if gzipped else open(archive, "rb")) as raw, \
                    tarfile.open(fileobj=_BoundedReads(raw, archive), mode="r:") as tar:  # type: ignore[call-overload]
                files = _extract_into(tar, archive, tmp, max_members, max_bytes)
        except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as e:
            raise SnapshotError(f"cannot read snapshot archive {archive}: {e}", hint=_HINT) from e
        except OSError as e:
            raise SnapshotError(
                f"cannot extract {archive} into {dest}: {e}",
                hint="check that the archive exists and the disk is writable and not full",
            ) from e
        tmp.chmod(0o755)
        if os.path.lexists(dest):
            raise SnapshotError(
                f"cannot extract {archive}: destination {dest} appeared while extracting",
                hint="extract into a new directory; another process may be using the same one",
            )
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return files
