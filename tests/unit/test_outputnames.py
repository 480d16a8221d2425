"""Object names for a run's output files: odd names are escaped (and reported), never fatal."""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from tasks.outputnames import output_key


def rel(raw: bytes) -> PurePosixPath:
    return PurePosixPath(os.fsdecode(raw))


def test_ordinary_names_are_kept_exactly() -> None:
    taken: set[str] = set()
    for name in ("outputs/model.pkl", "outputs/sub dir/résumé ✓.txt", "logs/a%20b.txt", "outputs/" + "n" * 200):
        assert output_key(PurePosixPath(name), taken) == (name, None)
    assert len(taken) == 4


def test_bytes_that_are_not_utf8_become_percent_escapes() -> None:
    key, note = output_key(rel(b"outputs/r\xe9sum\xe9.txt"), set())
    assert key == "outputs/r%E9sum%E9.txt"
    assert note is not None and "r\\xe9sum\\xe9.txt" in note and "uploaded as outputs/r%E9sum%E9.txt" in note
    assert note.isascii() and note.isprintable()  # safe to write to the run's log
    # valid multi-byte characters next to invalid bytes are kept
    assert output_key(rel("outputs/é".encode() + b"\xff.bin"), set())[0] == "outputs/é%FF.bin"


def test_control_characters_are_escaped() -> None:
    assert output_key(PurePosixPath("outputs/a\nb\tc\x7f.txt"), set())[0] == "outputs/a%0Ab%09c%7F.txt"


def test_an_escaped_name_never_overwrites_another_file() -> None:
    taken: set[str] = set()
    assert output_key(PurePosixPath("outputs/r%E9.txt"), taken) == ("outputs/r%E9.txt", None)
    key, note = output_key(rel(b"outputs/r\xe9.txt"), taken)
    assert key == "outputs/r%E9.txt~2" and note is not None
    key, note = output_key(rel(b"outputs/r\xe9.txt"), taken | {"outputs/r%E9.txt~2"})
    assert key == "outputs/r%E9.txt~3"
    # a valid name that an escaped one took first is renamed too, and says why
    taken = {"outputs/x%FF"}
    key, note = output_key(PurePosixPath("outputs/x%FF"), taken)
    assert key == "outputs/x%FF~2" and note is not None and "taken by an escaped name" in note
