"""The node cache is pruned least recently used first, and never under a run that holds an entry."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from tasks import cachegc


def _entry(cache: Path, kind: str, name: str, size: int, used: float) -> Path:
    folder = cache / kind / name
    folder.mkdir(parents=True)
    (folder / "blob").write_bytes(os.urandom(size))
    sidecar = {"snapshots": ".json", "envs": ".stamps.json", "data": ".manifest.json"}[kind]
    folder.with_name(name + sidecar).write_text("{}")
    lock = cachegc.use_lock(folder)
    lock.touch()
    os.utime(lock, (used, used))
    return folder


def test_least_recently_used_go_first_until_under_the_cap(tmp_path: Path) -> None:
    now = time.time()
    old = _entry(tmp_path, "snapshots", "a" * 64, 300_000, now - 300)
    mid = _entry(tmp_path, "envs", "b" * 64, 300_000, now - 200)
    new = _entry(tmp_path, "data", "workspaceblobstore", 300_000, now - 100)
    total = sum(e.size for e in cachegc.entries(tmp_path))
    result = cachegc.prune(tmp_path, total - 1, lambda _m: None)  # one entry must go: the oldest
    assert result.removed == (f"snapshots/{'a' * 64}",)
    assert not old.exists() and not old.with_name(old.name + ".json").exists()
    assert mid.exists() and new.exists()
    assert result.size_after <= total - 1
    assert cachegc.prune(tmp_path, 10**12).removed == ()  # under the cap: nothing to do


def test_an_entry_in_use_is_kept_and_the_next_one_goes(tmp_path: Path) -> None:
    now = time.time()
    busy = _entry(tmp_path, "envs", "c" * 64, 300_000, now - 500)
    idle = _entry(tmp_path, "snapshots", "d" * 64, 300_000, now - 400)
    held, release = threading.Event(), threading.Event()

    def run() -> None:
        with cachegc.using(busy):
            held.set()
            release.wait(10)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert held.wait(5)
        result = cachegc.prune(tmp_path, 1)
        assert busy.exists() and not idle.exists()
        assert result.busy == 1
    finally:
        release.set()
        t.join()
    assert cachegc.prune(tmp_path, 1).removed == (f"envs/{'c' * 64}",)  # released: now it may go


def test_using_marks_the_entry_recent(tmp_path: Path) -> None:
    folder = _entry(tmp_path, "snapshots", "e" * 64, 10, time.time() - 1000)
    with cachegc.using(folder):
        pass
    assert time.time() - cachegc.use_lock(folder).stat().st_mtime < 60


def test_work_in_progress_is_not_an_entry(tmp_path: Path) -> None:
    """An extraction or a build under way (``<digest>.<pid>.d``, ``<digest>.build-tmp``) is never pruned."""
    for name in (f"{'f' * 64}.123.d", f"{'f' * 64}.build-tmp"):
        (tmp_path / "snapshots" / name).mkdir(parents=True)
        (tmp_path / "snapshots" / name / "blob").write_bytes(os.urandom(100_000))
    assert cachegc.entries(tmp_path) == []
    assert cachegc.prune(tmp_path, 1).removed == ()
    assert len(list((tmp_path / "snapshots").iterdir())) == 2
