"""Object-store names for the files a run leaves in ./outputs and ./logs.

A script may create a file whose name is not UTF-8 (``open(b"outputs/r\\xe9sum\\xe9.txt", "w")``) or holds
control characters (a newline, a tab). Neither can become an S3 object name as is, and a run must not fail
at finalization because of a file name. Such a name is escaped: every byte that is not part of valid UTF-8,
and every control character, becomes ``%XX`` (its hex value), e.g. ``outputs/r%E9sum%E9.txt``. Names that
need no escaping are kept exactly. If an escaped name collides with another file's name, ``~2``, ``~3``...
is appended. The node logs every renamed file, so the run's log says where it went.
"""

from __future__ import annotations

import codecs
import os
from pathlib import PurePath

__all__ = ["output_key"]

_HANDLER = "cluster-percent-escape"


def _percent(exc: UnicodeError) -> tuple[str, int]:
    if not isinstance(exc, UnicodeDecodeError):
        raise exc
    bad = exc.object[exc.start:exc.end]
    return "".join(f"%{b:02X}" for b in bad), exc.end


codecs.register_error(_HANDLER, _percent)


def _escape(raw: bytes) -> str:
    text = raw.decode("utf-8", errors=_HANDLER)
    return "".join(f"%{ord(c):02X}" if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def output_key(relative: PurePath, taken: set[str]) -> tuple[str, str | None]:
    """The object name for a run file at ``relative`` (below the run directory) and, if it had to be
    renamed, a line for the run's log saying so. ``taken`` holds the names used so far and is updated."""
    raw = os.fsencode(relative.as_posix())
    name = _escape(raw)
    if name == os.fsdecode(raw) and name not in taken:
        taken.add(name)
        return name, None
    escaped = name != os.fsdecode(raw)
    base, n = name, 2
    while name in taken:
        name, n = f"{base}~{n}", n + 1
    taken.add(name)
    why = "is not valid UTF-8 text or has control characters" if escaped else "is taken by an escaped name"
    return name, f"file name {ascii(raw)[1:]} {why}: uploaded as {name}"
