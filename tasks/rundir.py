"""Reading what a run left in its run directory, which is hostile input.

The script may have replaced any file with a symlink (to the node's config, to ``/dev/zero``), a FIFO
(an open would block forever), a device, or a huge file. So everything here:

* opens with ``O_NOFOLLOW | O_NONBLOCK`` relative to an already opened parent directory (``dir_fd``), so
  no path component is followed and no open blocks;
* accepts only regular files (``fstat`` after the open) and real directories, and reports everything
  else (``skipped``) so the node can log it;
* reads with a bound, and counts bytes and files against the pool's caps (``OutputCaps``);
* turns file names that are not UTF-8 into an escaped, reversible key (``%XX`` for each bad byte).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tasks.outputnames import output_key

__all__ = ["OutputCaps", "OutputWalk", "open_regular", "read_new", "real_dir", "safe_key"]

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = _OPEN_FLAGS | getattr(os, "O_DIRECTORY", 0)


@dataclass(frozen=True)
class OutputCaps:
    """Per-run caps on what a node uploads from ``./outputs`` and ``./logs`` (a pool setting)."""

    max_bytes: int = 10 * 1024**3
    max_files: int = 10_000


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: Path, *, dir_fd: int | None = None) -> tuple[int | None, str]:
    """Open ``path`` for reading if it is a regular file, following no link and never blocking.

    Returns ``(fd, "")`` or ``(None, why)``. With ``dir_fd`` the path is a single name in that directory.
    """
    try:
        fd = os.open(path, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return None, "a symlink"
        if e.errno in (errno.ENXIO, errno.EWOULDBLOCK):
            return None, "a FIFO or socket"
        return None, f"unreadable ({e.strerror})"
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None, _kind(st.st_mode)
    return fd, ""


def read_new(fd: int, pos: int, limit: int) -> bytes:
    """Read at most ``limit`` bytes of the regular file ``fd`` from ``pos`` (pread: no shared offset)."""
    return os.pread(fd, limit, pos)


def safe_key(parts: list[str]) -> str:
    """A posix path for the object store from name parts as ``os.scandir`` gives them (surrogate-escaped).

    Valid UTF-8 passes unchanged (and so does ``%``); each byte that is not UTF-8 becomes ``%XX``."""
    out = []
    for part in parts:
        raw = part.encode("utf-8", "surrogateescape")
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            text = raw.decode("utf-8", "surrogateescape")
            out.append("".join(f"%{ord(c) - 0xDC00:02X}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text))
    return "/".join(out)


@dataclass
class OutputWalk:
    """Walk a run's folder without following links; yield ``(key, open file)`` for each regular file.

    ``skipped`` lists what was not uploaded and why; ``over`` says which cap stopped the walk."""

    root: Path
    folder: str
    caps: OutputCaps
    log: Callable[[str], None]
    files: int = 0
    nbytes: int = 0
    over: str = ""
    skipped: list[str] = field(default_factory=list)
    taken: set[str] = field(default_factory=set)  # object names given so far (escaped names never collide)

    def _skip(self, rel: str, why: str) -> None:
        # a name may hold newlines or escapes meant to forge log lines: show them escaped
        shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in rel)
        self.skipped.append(f"{shown}: {why}")
        self.log(f"skipped {shown}: {why}")

    def __iter__(self) -> Iterator[tuple[str, BinaryIO, int]]:
        try:
            top = os.open(self.root / self.folder, _DIR_FLAGS)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return
            why = "a symlink" if e.errno in (errno.ELOOP, errno.ENOTDIR) else f"unreadable ({e.strerror})"
            self._skip(f"./{self.folder}", f"{why}: nothing in it is uploaded")
            return
        yield from self._walk(top, [self.folder])

    def _walk(self, dfd: int, parts: list[str]) -> Iterator[tuple[str, BinaryIO, int]]:
        try:
            with os.scandir(dfd) as it:
                entries = sorted(e.name for e in it)
        except OSError as e:
            os.close(dfd)
            self._skip(safe_key(parts), f"unreadable folder ({e.strerror})")
            return
        try:
            for name in entries:
                if self.over:
                    return
                rel = safe_key([*parts, name])
                try:
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    try:
                        sub = os.open(name, _DIR_FLAGS, dir_fd=dfd)
                    except OSError as e:
                        self._skip(rel, f"folder not opened ({e.strerror})")
                        continue
                    yield from self._walk(sub, [*parts, name])
                    continue
                fd, why = open_regular(Path(name), dir_fd=dfd)
                if fd is None:
                    self._skip(rel, why)
                    continue
                size = os.fstat(fd).st_size
                if self.files + 1 > self.caps.max_files:
                    os.close(fd)
                    self.over = f"more than {self.caps.max_files} files"
                    return
                if self.nbytes + size > self.caps.max_bytes:
                    os.close(fd)
                    self.over = f"more than {self.caps.max_bytes} bytes"
                    return
                self.files += 1
                self.nbytes += size
                # the object name: odd names (not UTF-8, control characters) escaped, and the log says so
                key, note = output_key(PurePosixPath(*parts, name), self.taken)
                if note:
                    self.log(note)
                fh = os.fdopen(fd, "rb")
                try:
                    yield key, fh, size
                finally:
                    fh.close()
        finally:
            os.close(dfd)


@contextlib.contextmanager
def real_dir(path: Path) -> Iterator[Path | None]:
    """``path`` opened without following a link; yields a path to it that cannot be swapped (the open descriptor
    under /proc/self/fd), or None when it is missing or not a real directory."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
            raise
        yield None
        return
    try:
        yield Path(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Delete a run's directory whatever the run did to it: a folder it made unreadable or unwritable
    (chmod 000) is given back its owner's permissions first; links are removed, never followed."""
    import contextlib
    import shutil

    def fix(func: Callable[..., object], name: str, _exc: object) -> None:
        for p in (os.path.dirname(name), name):
            with contextlib.suppress(OSError):
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
        if func in (os.open, os.scandir, os.listdir) and os.path.isdir(name) and not os.path.islink(name):
            shutil.rmtree(name, onerror=fix)  # a folder we could not enter: now we can
            return
        with contextlib.suppress(OSError):
            func(name)

    if os.path.islink(path):
        path.unlink()
        return
    if path.exists():
        shutil.rmtree(path, onerror=fix)
