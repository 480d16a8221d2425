"""The default datastore against the real S3 server."""

from __future__ import annotations

import filecmp
import json
from pathlib import Path

import pytest

from cluster import Workspace
from cluster.errors import ConflictError, NotFoundError, UsageError

pytestmark = pytest.mark.integration


@pytest.fixture
def ws(cluster_dir: Path) -> Workspace:
    return Workspace.from_config(cluster_dir / "config.json")


def test_tutorial_print_line(ws: Workspace) -> None:
    ds = ws.get_default_datastore()
    assert (ds.datastore_type, ds.container_name) == ("S3", "datastore")
    assert ds.account_name == ws.settings.s3_endpoint
    assert ws.compute_targets == {}


def test_mnist_round_trip_is_byte_identical(ws: Workspace, mnist_dir: Path, tmp_path: Path) -> None:
    ds = ws.get_default_datastore()
    ref = ds.upload(src_dir=mnist_dir, target_path="rt-mnist", overwrite=True, show_progress=False)
    assert ref.path_on_datastore == "rt-mnist"
    names = sorted(p.name for p in mnist_dir.iterdir() if p.is_file())
    assert ds.list("rt-mnist") == [f"rt-mnist/{n}" for n in names]
    summary = ds.download(tmp_path, prefix="rt-mnist", show_progress=False)
    assert summary.files == len(names)
    for n in names:
        assert filecmp.cmp(mnist_dir / n, tmp_path / "rt-mnist" / n, shallow=False)
    again = ds.download(tmp_path, prefix="rt-mnist", show_progress=False)
    assert (again.files, again.skipped) == (0, len(names))


def test_identical_skipped_differing_refused(ws: Workspace, tmp_path: Path) -> None:
    ds = ws.get_default_datastore()
    src = tmp_path / "src"
    (src / "sub dir").mkdir(parents=True)
    (src / "a.txt").write_text("one")
    (src / "sub dir" / "é.txt").write_text("two")
    first = ds.upload_files(sorted(src.rglob("*.txt")), relative_root=src, target_path="skiptest", show_progress=False)
    assert (first.files, first.skipped) == (2, 0)
    second = ds.upload_files(sorted(src.rglob("*.txt")), relative_root=src, target_path="skiptest",
                             show_progress=False)
    assert (second.files, second.skipped) == (0, 2)
    (src / "a.txt").write_text("changed")
    with pytest.raises(ConflictError, match=r"skiptest/a\.txt"):
        ds.upload(src, target_path="skiptest", show_progress=False)
    ds.upload(src, target_path="skiptest", overwrite=True, show_progress=False)
    assert ds._store.get_bytes("skiptest/a.txt") == b"changed"
    assert "skiptest/sub dir/é.txt" in ds.list("skiptest")


def test_bad_paths(ws: Workspace, tmp_path: Path) -> None:
    ds = ws.get_default_datastore()
    with pytest.raises(UsageError, match="not a directory"):
        ds.upload(tmp_path / "missing")
    with pytest.raises(UsageError, match=r"\.\."):
        ds.list("../x")
    with pytest.raises(NotFoundError):
        ds.download(tmp_path, prefix="no-such-prefix", show_progress=False)


def test_data_references(ws: Workspace) -> None:
    from cluster import DataReference

    ds = ws.get_default_datastore()
    m = ds.path("mnist").as_mount()
    assert m == DataReference("workspaceblobstore", "mnist", "mount")
    assert DataReference.from_dict(m.to_dict()) == m
    assert ds.as_mount() != m and ds.as_mount().path_on_datastore == ""
    d = ds.as_download(path_on_compute="data")
    assert d.mode == "download" and "download" in str(d) and "data" in str(d)


def test_node_data_cache_forgets_what_the_datastore_deleted(ws: Workspace, tmp_path: Path) -> None:
    """A mounted folder shows exactly the datastore's files: one deleted there is dropped from the node cache
    (file and manifest entry) on the next use; nothing is downloaded twice."""
    from cluster.objectstore import ObjectStore
    from tasks import datacache
    from tests.helpers import unique

    prefix = unique("cachegone")
    store = ObjectStore(ws.settings, ws.settings.data_bucket)
    store.put_bytes(f"{prefix}/keep.txt", b"keep")
    store.put_bytes(f"{prefix}/drop.txt", b"drop")
    ref = ws.get_default_datastore().path(prefix).as_mount()
    cache = tmp_path / "cache"
    first = datacache.sync_mount(store, ref, cache, lambda _m: None)
    assert first.downloaded == 2 and sorted(p.name for p in first.path.iterdir()) == ["drop.txt", "keep.txt"]
    store.delete(f"{prefix}/drop.txt")
    notes: list[str] = []
    second = datacache.sync_mount(store, ref, cache, notes.append)
    assert second.downloaded == 0 and second.reused == 1
    assert [p.name for p in second.path.iterdir()] == ["keep.txt"]
    manifest = json.loads((cache / "data" / f"{ref.datastore}.manifest.json").read_text())
    assert sorted(k for k in manifest if k.startswith(prefix)) == [f"{prefix}/keep.txt"]
