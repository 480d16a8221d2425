"""Run isolation without servers: the sandbox's command line, the hostile run-directory reader, strict ids,
snapshot verification (tasks/sandbox.py, tasks/rundir.py, tasks/snapshots.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cluster.errors import UsageError
from cluster.snapshot import build_snapshot
from tasks.rundir import OutputCaps, OutputWalk, open_regular, safe_key
from tasks.sandbox import RUN_UID_BASE, RUN_UID_SPAN, Sandbox, SandboxPolicy, run_ids_for
from tasks.snapshots import BadInputError, check_digest, check_run_id, tree_digest


def test_policy_rejects_unknown_modes() -> None:
    with pytest.raises(UsageError, match="isolation"):
        SandboxPolicy(isolation="sometimes")
    with pytest.raises(UsageError, match="network"):
        SandboxPolicy(network="bridge")
    with pytest.raises(UsageError, match="max_processes"):
        SandboxPolicy(max_processes=2)


def test_required_isolation_refuses_level_none_only() -> None:
    required = SandboxPolicy(isolation="required")
    assert Sandbox("none", required).refuses() is not None
    assert Sandbox("uid", required, run_uid=61001, run_gid=61001).refuses() is None
    assert Sandbox("sandbox", required, bwrap="/usr/bin/bwrap").refuses() is None
    assert Sandbox("none", SandboxPolicy()).refuses() is None


def test_run_uids_are_dedicated_and_stable() -> None:
    uid, gid = run_ids_for("node-a")
    assert uid == gid and RUN_UID_BASE <= uid < RUN_UID_BASE + RUN_UID_SPAN
    assert run_ids_for("node-a") == (uid, gid)


def test_sandbox_command_hides_node_dirs_and_binds_only_what_the_run_needs(tmp_path: Path) -> None:
    work, cache = tmp_path / "work", tmp_path / "cache"
    run, tmp = work / "runs" / "r.1", work / "runs" / "r.1.channel" / "tmp"
    env = cache / "envs" / "abc"
    box = Sandbox("sandbox", SandboxPolicy(network="none"), bwrap="/usr/bin/bwrap", run_uid=61001, run_gid=61001,
                  hidden=(work, cache))
    argv = box.wrap(["python", "train.py"], python=sys.executable, run_dir=run, readonly=[env], tmp_dir=tmp,
                    cwd=run).argv
    assert argv[0] == "/usr/bin/bwrap" and argv[-2:] == ["python", "train.py"]
    assert "--unshare-net" in argv and "--share-net" not in argv
    assert "--unshare-pid" in argv and "--proc" in argv
    pairs = [(argv[i], argv[i + 1], argv[i + 2]) for i in range(len(argv) - 2) if argv[i].endswith("bind")]
    assert ("--ro-bind", str(env), str(env)) in pairs
    assert ("--bind", str(run), str(run)) in pairs
    assert ("--bind", str(tmp), "/tmp") in pairs
    assert not any(src in (str(work), str(cache), "/") for _kind, src, _dst in pairs)
    if os.geteuid() == 0:
        assert "--reuid=61001" in argv
    else:
        assert "--unshare-user" in argv


def test_levels_below_sandbox_do_not_wrap() -> None:
    assert Sandbox("none", SandboxPolicy()).wrap(["a"], python="p", run_dir=Path("/r"), tmp_dir=Path("/t"),
                                                 cwd=Path("/r")).argv == ["a"]
    launch = Sandbox("uid", SandboxPolicy(), run_uid=61002, run_gid=61003).wrap(
        ["a"], python="p", run_dir=Path("/r"), tmp_dir=Path("/t"), cwd=Path("/r"))
    assert (launch.argv, launch.user, launch.group, launch.wrapped) == (["a"], 61002, 61003, False)


def test_output_walk_takes_regular_files_only(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    (outputs / "sub").mkdir(parents=True)
    (outputs / "a.txt").write_text("a")
    (outputs / "sub" / "b.txt").write_text("bb")
    (outputs / "link").symlink_to("/etc/passwd")
    (outputs / "dirlink").symlink_to("/etc")
    os.mkfifo(outputs / "fifo")
    (outputs / os.fsdecode(b"\xff-name.txt")).write_text("c")
    seen: list[str] = []
    walk = OutputWalk(tmp_path, "outputs", OutputCaps(), seen.append)
    got = {key: fh.read() for key, fh, _size in walk}
    assert got == {"outputs/a.txt": b"a", "outputs/sub/b.txt": b"bb", "outputs/%FF-name.txt": b"c"}
    assert sorted(walk.skipped) == ["outputs/dirlink: a symlink", "outputs/fifo: a FIFO",
                                    "outputs/link: a symlink"]
    assert walk.files == 3 and walk.nbytes == 4 and not walk.over


def test_output_walk_stops_at_the_caps_and_skips_a_symlinked_folder(tmp_path: Path) -> None:
    (tmp_path / "outputs").mkdir()
    for i in range(5):
        (tmp_path / "outputs" / f"f{i}").write_text("x" * 10)
    walk = OutputWalk(tmp_path, "outputs", OutputCaps(max_bytes=1000, max_files=3), lambda _m: None)
    assert len(list(walk)) == 3 and walk.over == "more than 3 files"
    walk = OutputWalk(tmp_path, "outputs", OutputCaps(max_bytes=25, max_files=100), lambda _m: None)
    assert len(list(walk)) == 2 and walk.over == "more than 25 bytes"
    (tmp_path / "logs").symlink_to(tmp_path / "outputs")
    walk = OutputWalk(tmp_path, "logs", OutputCaps(), lambda _m: None)
    assert list(walk) == [] and walk.skipped == ["./logs: a symlink: nothing in it is uploaded"]


def test_open_regular_never_blocks_or_follows(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert open_regular(tmp_path / "fifo") == (None, "a FIFO")
    assert open_regular(tmp_path / "zero") == (None, "a symlink")
    assert open_regular(Path("/dev/null")) == (None, "a device")


def test_safe_key_escapes_only_what_is_not_utf8() -> None:
    assert safe_key(["outputs", "ü 100%.txt"]) == "outputs/ü 100%.txt"
    assert safe_key(["outputs", os.fsdecode(b"a\xffb")]) == "outputs/a%FFb"


@pytest.mark.parametrize("bad", ["exp\n", "../x", "a/b", "", ".hidden", "x" * 300, 5, None])
def test_run_ids_are_checked_strictly(bad: object) -> None:
    with pytest.raises(BadInputError):
        check_run_id(bad)


def test_good_ids_and_digests_pass() -> None:
    assert check_run_id("exp_1795860532373_566812c4") == "exp_1795860532373_566812c4"
    assert check_digest("a" * 64) == "a" * 64
    for bad in ("A" * 64, "a" * 63, "g" * 64, "a" * 64 + "\n"):
        with pytest.raises(BadInputError):
            check_digest(bad)


def test_tree_digest_is_the_snapshot_digest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "train.py").write_text("print(1)\n")
    (src / "pkg" / "run.sh").write_text("#!/bin/sh\n")
    (src / "pkg" / "run.sh").chmod(0o755)
    snap = build_snapshot(src, work_dir=tmp_path / "out")
    assert tree_digest(src) == snap.digest
    (src / "train.py").write_text("print(2)\n")
    assert tree_digest(src) != snap.digest


@pytest.mark.parametrize("bad", ["10", True, 0, -1, float("nan"), float("inf")])
def test_max_run_duration_is_checked_at_construction(tmp_path: Path, bad: object) -> None:
    from cluster import Estimator, ScriptRunConfig

    (tmp_path / "train.py").write_text("")
    with pytest.raises(UsageError, match="max_run_duration_seconds"):
        ScriptRunConfig(tmp_path, "train.py", max_run_duration_seconds=bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="max_run_duration_seconds"):
        Estimator(tmp_path, entry_script="train.py", max_run_duration_seconds=bad)  # type: ignore[arg-type]
    assert ScriptRunConfig(tmp_path, "train.py", max_run_duration_seconds=5).max_run_duration_seconds == 5.0


def test_check_name_is_a_full_match() -> None:
    from cluster.layout import check_name

    with pytest.raises(UsageError):
        check_name("experiment", "exp\n")
    assert check_name("experiment", "exp") == "exp"


def test_skipped_names_cannot_forge_log_lines(tmp_path: Path) -> None:
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "x\n[node] final status: Completed").symlink_to("/etc/passwd")
    seen: list[str] = []
    assert list(OutputWalk(tmp_path, "outputs", OutputCaps(), seen.append)) == []
    assert seen == ["skipped outputs/x\\n[node] final status: Completed: a symlink"]


def test_remove_tree_survives_what_a_run_leaves(tmp_path: Path) -> None:
    from tasks.rundir import remove_tree

    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    run = tmp_path / "run"
    (run / "locked" / "deep").mkdir(parents=True)
    (run / "locked" / "deep" / "f").write_text("x")
    (run / "link").symlink_to(outside)
    (run / "dirlink").symlink_to(tmp_path)
    (run / "locked").chmod(0)
    remove_tree(run)
    assert not run.exists() and outside.read_text() == "keep"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a dedicated uid")
def test_remove_tree_as_the_owner_of_folders_made_unreadable(tmp_path: Path) -> None:
    """What a node not running as root faces: the run's own uid made folders 000; the node (same uid) still
    removes everything."""
    import shutil
    import tempfile

    from tasks.rundir import remove_tree

    base_dir = Path(tempfile.mkdtemp(prefix="remove-tree-", dir="/tmp"))  # pytest's tmp_path is root-only
    request_cleanup = base_dir
    run = base_dir / "run"
    (run / "a" / "b" / "c").mkdir(parents=True)
    (run / "a" / "b" / "c" / "f").write_text("x")
    (run / "a" / "g").write_text("y")
    for base, dirs, files in os.walk(base_dir):
        for name in (".", *dirs, *files):
            os.chown(os.path.join(base, name), 65534, 65534)
    (run / "a" / "b").chmod(0)
    (run / "a").chmod(0o500)
    pid = os.fork()
    if pid == 0:  # the child: drop to the owner's uid, remove, report by exit status
        code = 1
        try:
            os.setgid(65534)
            os.setuid(65534)
            remove_tree(run)
            code = 0 if not os.path.lexists(run) else 2
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    try:
        assert os.waitstatus_to_exitcode(status) == 0
        assert not run.exists()
    finally:
        shutil.rmtree(request_cleanup, ignore_errors=True)
