"""Snapshot archives cannot balloon a node's memory or disk: header size, compression ratio, total size."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cluster.errors import SnapshotError
from tasks.extract import MAX_HEADER_BYTES, safe_extract


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readinto(self, b: bytearray) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n

    def readable(self) -> bool:
        return True


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, io.RawIOBase | None]]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, data)  # type: ignore[arg-type]
    return path


def test_an_oversized_pax_header_is_refused_before_it_is_read(tmp_path: Path) -> None:
    info = tarfile.TarInfo("train.py")
    info.size = 0
    info.pax_headers = {"comment": "x" * (MAX_HEADER_BYTES + 1)}
    archive = _archive(tmp_path / "pax.tar.gz", [(info, None)])
    with pytest.raises(SnapshotError, match="oversized PAX or GNU long-name header"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_decompression_bomb_stops_at_the_ratio(tmp_path: Path) -> None:
    info = tarfile.TarInfo("zeros.bin")
    info.size = 100 * 1024 * 1024  # compresses about 1000:1
    archive = _archive(tmp_path / "bomb.tar.gz", [(info, _Zeros(info.size))])
    assert archive.stat().st_size < 1024 * 1024
    with pytest.raises(SnapshotError, match=r"over the .*-byte limit"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_size_limit_is_the_callers(tmp_path: Path) -> None:
    info = tarfile.TarInfo("data.bin")
    info.size = 2000
    archive = _archive(tmp_path / "ok.tar.gz", [(info, _Zeros(info.size))])
    assert safe_extract(archive, tmp_path / "out", max_bytes=2000) == ["data.bin"]
    with pytest.raises(SnapshotError, match="over the 1999-byte limit"):
        safe_extract(archive, tmp_path / "out2", max_bytes=1999)
