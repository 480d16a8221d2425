"""Snapshots (cluster.snapshot) and their safe extraction on a node (tasks.extract), on real files."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster.errors import SnapshotError
from cluster.snapshot import build_snapshot
from tasks.extract import safe_extract


def write(root: Path, rel: str, data: bytes | str = b"x", *, executable: bool = False) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(0o755 if executable else 0o644)
    return path


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    write(root, "train.py", "print('hi')\n", executable=True)
    write(root, "pkg/__init__.py", "")
    write(root, "pkg/model.py", "W = 1\n")
    write(root, "données/été.txt", "accents\n")
    write(root, "日本語.py", "x = 1\n")
    return root


def paths(snap_root: Path, work: Path) -> list[str]:
    return [f.path for f in build_snapshot(snap_root, work_dir=work).files]


# ---- build_snapshot -----------------------------------------------------------------------------

def test_same_directory_gives_same_digest_and_identical_archive(src: Path, tmp_path: Path) -> None:
    a = build_snapshot(src, work_dir=tmp_path / "a")
    b = build_snapshot(src, work_dir=tmp_path / "b")
    assert a.digest == b.digest and len(a.digest) == 64
    assert a.archive.name == f"{a.digest}.tar.gz"
    assert a.archive.read_bytes() == b.archive.read_bytes()
    assert a.total_bytes == sum(f.size for f in a.files) == sum(
        p.stat().st_size for p in src.rglob("*") if p.is_file()
    )
    manifest = json.loads(json.dumps(a.manifest()))
    assert manifest["digest"] == a.digest
    assert [f["path"] for f in manifest["files"]] == sorted(f.path for f in a.files)
    with tarfile.open(a.archive) as tar:
        for m in tar.getmembers():
            assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
            assert m.mode in (0o644, 0o755)


def test_mtime_does_not_change_digest_but_content_and_exec_bit_do(src: Path, tmp_path: Path) -> None:
    first = build_snapshot(src, work_dir=tmp_path / "1")
    os.utime(src / "pkg/model.py", (1_000_000, 1_000_000))
    touched = build_snapshot(src, work_dir=tmp_path / "2")
    assert touched.digest == first.digest
    assert touched.archive.read_bytes() == first.archive.read_bytes()

    (src / "pkg/model.py").write_text("W = 2\n")
    changed = build_snapshot(src, work_dir=tmp_path / "3")
    assert changed.digest != first.digest

    (src / "pkg/model.py").chmod(0o755)
    assert build_snapshot(src, work_dir=tmp_path / "4").digest != changed.digest


def test_default_ignores(src: Path, tmp_path: Path) -> None:
    write(src, ".git/config")
    write(src, "pkg/__pycache__/model.cpython-311.pyc")
    write(src, "stray.pyc")
    write(src, ".venv/lib/site.py")
    write(src, "venv/lib/site.py")
    write(src, "myenv/pyvenv.cfg", "home = /usr\n")
    write(src, "myenv/lib/site.py")
    write(src, "env/pyvenv.cfg", "home = /usr\n")
    write(src, "node_modules/x/index.js")
    write(src, ".DS_Store")
    write(src, "sub/.pytest_cache/v")
    write(src, "config/env/settings.py")  # an env/ that is not a virtualenv is kept
    got = paths(src, tmp_path / "w")
    kept = ["train.py", "pkg/__init__.py", "pkg/model.py", "données/été.txt", "日本語.py"]
    assert got == sorted([*kept, "config/env/settings.py"])


def test_clusterignore_patterns_and_negation(src: Path, tmp_path: Path) -> None:
    write(src, ".clusterignore", "# data lives in the datastore\n*.log\n!keep.log\ndata/\n/checkpoints\n")
    write(src, "run.log")
    write(src, "pkg/debug.log")
    write(src, "keep.log")
    write(src, "data/big.bin")
    write(src, "checkpoints/epoch1.pt")
    write(src, "pkg/checkpoints/kept.py")  # "/checkpoints" is anchored at the root
    got = paths(src, tmp_path / "w")
    assert "keep.log" in got and "pkg/checkpoints/kept.py" in got and ".clusterignore" in got
    assert not {"run.log", "pkg/debug.log", "data/big.bin", "checkpoints/epoch1.pt"} & set(got)


def test_over_the_limit_names_the_largest_files_and_writes_nothing(src: Path, tmp_path: Path) -> None:
    write(src, "weights/huge.bin", b"\0" * 5000)
    for i in range(6):
        write(src, f"blob{i}.bin", b"\0" * (1000 + i))
    work = tmp_path / "work"
    with pytest.raises(SnapshotError) as exc:
        build_snapshot(src, max_bytes=4096, work_dir=work)
    msg = str(exc.value)
    assert "weights/huge.bin (4.9 KiB)" in msg
    assert "blob5.bin" in msg and "blob2.bin" in msg and "blob1.bin" not in msg  # only the 5 largest
    assert ".clusterignore" in msg and "max_snapshot_bytes" in msg
    assert not work.exists() or not any(work.iterdir())


@pytest.mark.parametrize("kind", ["missing", "file", "empty", "all-ignored"])
def test_unusable_source_directory(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "src"
    if kind == "file":
        write(tmp_path, "src", "not a dir")
    elif kind == "empty":
        target.mkdir()
    elif kind == "all-ignored":
        write(target, "__pycache__/a.pyc")
        write(target, "b.pyc")
    with pytest.raises(SnapshotError, match="src"):
        build_snapshot(target, work_dir=tmp_path / "w")


def test_symlink_inside_is_dereferenced_and_directory_symlink_skipped(src: Path, tmp_path: Path) -> None:
    (src / "link.py").symlink_to("pkg/model.py")
    (src / "pkg_alias").symlink_to("pkg", target_is_directory=True)
    snap = build_snapshot(src, work_dir=tmp_path / "w")
    names = [f.path for f in snap.files]
    assert "link.py" in names and not any(n.startswith("pkg_alias") for n in names)
    with tarfile.open(snap.archive) as tar:
        member = tar.getmember("link.py")
        assert member.isreg()
        assert tar.extractfile(member).read() == b"W = 1\n"  # type: ignore[union-attr]


@pytest.mark.parametrize("broken", [False, True])
def test_symlink_outside_or_broken_is_rejected(src: Path, tmp_path: Path, broken: bool) -> None:
    outside = write(tmp_path, "secret.txt", "secret")
    (src / "leak.txt").symlink_to(tmp_path / "nowhere" if broken else outside)
    with pytest.raises(SnapshotError, match=r"symlink leak\.txt") as exc:
        build_snapshot(src, work_dir=tmp_path / "w")
    assert ".clusterignore" in str(exc.value) and "copy" in str(exc.value)
    write(src, ".clusterignore", "leak.txt\n")
    assert "leak.txt" not in paths(src, tmp_path / "w")


# ---- round trip ---------------------------------------------------------------------------------

def test_round_trip_reproduces_files_byte_for_byte(src: Path, tmp_path: Path) -> None:
    write(src, "a/b/c/deep.bin", os.urandom(300_000))
    write(src, "a/empty.txt", b"")
    write(src, "scripts/run.sh", "#!/bin/sh\necho ok\n", executable=True)
    snap = build_snapshot(src, work_dir=tmp_path / "w")
    dest = tmp_path / "node" / "run1"
    extracted = safe_extract(snap.archive, dest)
    assert extracted == [f.path for f in snap.files]
    on_disk = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert on_disk == sorted(extracted)
    for f in snap.files:
        original, copy = src / f.path, dest / f.path
        assert copy.read_bytes() == original.read_bytes()
        assert bool(copy.stat().st_mode & 0o100) == bool(original.stat().st_mode & 0o100) == f.executable
        assert copy.stat().st_mode & 0o7777 in (0o644, 0o755)
    assert (dest / "données/été.txt").read_text() == "accents\n"
    assert (dest / "scripts/run.sh").stat().st_mode & 0o777 == 0o755


def test_extract_refuses_existing_destination(src: Path, tmp_path: Path) -> None:
    snap = build_snapshot(src, work_dir=tmp_path / "w")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(SnapshotError, match="already exists"):
        safe_extract(snap.archive, dest)


def test_extract_rejects_a_corrupt_archive(tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.tar.gz", b"not a tar file at all" * 100)
    with pytest.raises(SnapshotError, match="cannot read snapshot archive"):
        safe_extract(bad, tmp_path / "base" / "dest")
    assert list((tmp_path / "base").iterdir()) == []


# ---- malicious archives -------------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]


def info(name: str, kind: bytes = tarfile.REGTYPE, *, size: int = 0, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.size, ti.linkname, ti.mode = kind, size, linkname, 0o644
    return ti


def regular(name: str, data: bytes = b"pwned") -> Member:
    return info(name, size=len(data)), data


def craft(path: Path, members: list[Member]) -> Path:
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for ti, data in [regular("ok.txt", b"fine"), *members]:  # something is written before the bad one
            tar.addfile(ti, io.BytesIO(data) if data is not None else None)
    return path


MALICIOUS: dict[str, tuple[Callable[[Path], list[Member]], str, dict[str, int]]] = {
    "absolute path": (lambda s: [regular(str(s / "abs.txt"))], "absolute", {}),
    "dot-dot": (lambda s: [regular("../evil")], "'..'", {}),
    "dot-dot into sentinel": (lambda s: [regular("sub/../../../sentinel/evil")], "'..'", {}),
    "symlink": (lambda s: [(info("link", tarfile.SYMTYPE, linkname=str(s)), None), regular("link/evil")],
                "symlink", {}),
    "hardlink": (lambda s: [(info("hard", tarfile.LNKTYPE, linkname=str(s / "keep.txt")), None)],
                 "hardlink", {}),
    "char device": (lambda s: [(info("tty", tarfile.CHRTYPE), None)], "device", {}),
    "block device": (lambda s: [(info("sda", tarfile.BLKTYPE), None)], "device", {}),
    "fifo": (lambda s: [(info("pipe", tarfile.FIFOTYPE), None)], "FIFO", {}),
    "duplicate": (lambda s: [regular("ok.txt", b"again")], "duplicate", {}),
    "file over directory": (lambda s: [regular("d/x"), regular("d")], "clashes", {}),
    "too many members": (lambda s: [regular(f"f{i}") for i in range(5)], "limit of 3 members",
                         {"max_members": 3}),
    "too large": (lambda s: [regular("a", b"a" * 60), regular("b", b"b" * 60)], "100-byte limit",
                  {"max_bytes": 100}),
}


@pytest.mark.parametrize("case", list(MALICIOUS))
def test_malicious_archive_is_rejected_and_nothing_is_written(tmp_path: Path, case: str) -> None:
    sentinel = tmp_path / "sentinel"
    write(sentinel, "keep.txt", "untouched")
    base = tmp_path / "base"
    base.mkdir()
    dest = base / "dest"
    make, reason, limits = MALICIOUS[case]
    archive = craft(tmp_path / "evil.tar.gz", make(sentinel))
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))

    with pytest.raises(SnapshotError, match="refusing to extract") as exc:
        safe_extract(archive, dest, **limits)

    assert reason in str(exc.value)
    assert not dest.exists() and list(base.iterdir()) == []  # no dest, no leftover temp dir
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before
    assert (sentinel / "keep.txt").read_text() == "untouched"
