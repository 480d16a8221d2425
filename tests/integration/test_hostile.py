"""Hostile runs on a real node: entry scripts that attack the cluster, and what they must not achieve.

Every test submits real runs to a real node (``cluster worker`` as a subprocess) of the session's embedded
cluster. For each attack: the real secrets (the Redis password, the S3 keys, the node's environment) never
appear in anything the run could write (its live log, driver log, outputs, metrics); the node survives and
a later run still reads the original data; the hostile run ends with a clear status.

In CI (``CI=true``) the node must run scripts in the bubblewrap sandbox; elsewhere the tests adapt to the
level the node reports (and skip what only the sandbox guarantees).
"""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cluster import Estimator, Experiment, Run, ScriptRunConfig, Workspace, embedded, layout
from cluster.settings import Settings
from tasks.process import LINE_SPLIT_MARKER
from tests.helpers import unique, wait_until
from tests.integration.conftest import FAKE_NODE_SECRETS, NodeProcess, NodeStarter

pytestmark = [pytest.mark.integration]

RUN_TIMEOUT = 180.0
MAX_OUTPUT_FILES = 20
MAX_PROCESSES = 64


@pytest.fixture(scope="module")
def node(nodes: NodeStarter, pool: str) -> NodeProcess:
    """A node with fake secrets in its environment, a small process cap and a small output cap."""
    started = nodes.start(pool, extra_env=FAKE_NODE_SECRETS, extra_args=(
        "--max-processes", str(MAX_PROCESSES), "--max-output-files", str(MAX_OUTPUT_FILES),
        "--max-output-bytes", str(20 * 1024 * 1024)))
    return started


@pytest.fixture(scope="module")
def level(ws: Workspace, node: NodeProcess) -> str:
    found: str = wait_until(lambda: ws.redis.hget(layout.rk_node(node.name), "isolation"), timeout=30,
                            what="the node's isolation level in its heartbeat")
    if os.environ.get("CI") == "true":
        assert found == "sandbox", f"CI requires the bubblewrap sandbox, the node reports {found!r}"
    return found


@pytest.fixture(scope="module")
def secrets(settings: Settings, cluster_dir: Path) -> list[str]:
    """Every credential of the cluster: the admin's, the node's and the controller's, and the node's env."""
    password = urlsplit(settings.redis_url).password or ""
    values = [settings.s3_secret_key, settings.s3_access_key, password, *FAKE_NODE_SECRETS.values()]
    for role in ("node", "controller"):
        other = Settings.from_file(embedded.role_config(cluster_dir, role))
        values += [other.s3_secret_key, urlsplit(other.redis_url).password or ""]
    assert all(len(v) >= 8 for v in values)
    return values


def submit(ws: Workspace, pool: str, source: Path, arguments: list[Any] | None = None,
           max_seconds: float | None = None) -> Run:
    config = ScriptRunConfig(source_directory=source, script="train.py", arguments=arguments or [],
                             compute_target=pool, max_run_duration_seconds=max_seconds)
    return Experiment(ws, unique("hostile")).submit(config)


def finish(run: Run) -> dict[str, Any]:
    return run.wait_for_completion(timeout=RUN_TIMEOUT, raise_on_error=False)


def source(tmp_path: Path, text: str) -> Path:
    root = tmp_path / unique("src")
    root.mkdir()
    (root / "train.py").write_text(textwrap.dedent(text).lstrip("\n"))
    return root


def everything(ws: Workspace, run: Run) -> bytes:
    """All a run could have written: its live log and metrics in Redis, every object under its prefix."""
    parts = [json.dumps(fields).encode() for _id, fields in ws.redis.xrange(layout.rk_run_log(run.id))]
    parts += [json.dumps(fields).encode() for _id, fields in ws.redis.xrange(layout.rk_run_metrics(run.id))]
    for obj in ws.store.list(run.prefix):
        parts.append(obj.key.encode())
        parts.append(ws.store.get_bytes(obj.key))
    return b"\n".join(parts)


def log_lines(ws: Workspace, run: Run) -> list[str]:
    return ws.store.get_bytes(run.files_prefix() + layout.RUN_DRIVER_LOG).decode("utf-8", "replace").splitlines()


def assert_no_secret(ws: Workspace, run: Run, secrets: list[str]) -> None:
    blob = everything(ws, run)
    leaked = [s for s in secrets if s.encode() in blob]
    assert not leaked, f"run {run.id} got hold of {len(leaked)} secret(s)"


def assert_node_alive(ws: Workspace, node: NodeProcess) -> None:
    assert node.proc.poll() is None, f"node died:\n{node.log_text()[-3000:]}"
    assert ws.redis.hget(layout.rk_node(node.name), "state") is not None


# ---- secrets ------------------------------------------------------------------------------------

SECRET_HUNT = r"""
import glob, json, os, socket, sys, urllib.request
found = []
def note(label, data):
    found.append(f"{label}: {data!r}"[:20000])
cluster_dir, redis_port, s3_port, bucket = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
# 1. the SDK's own discovery, from the run directory and from the state directory's parent
for where in (None, cluster_dir, os.path.dirname(cluster_dir)):
    try:
        from cluster import Workspace
        ws = Workspace.from_config(path=where) if where else Workspace.from_config()
        note("WORKSPACE", ws.settings.to_dict())
    except Exception as e:
        print("from_config", where, "failed:", type(e).__name__)
# 2. a filesystem search: every config-like file, every small file outside the system
skip = ("/proc", "/sys", "/dev")
for base, dirs, files in os.walk("/"):
    if base.startswith(skip):
        dirs[:] = []
        continue
    for f in files:
        p = os.path.join(base, f)
        interesting = f in ("config.json", "state.json", "redis.conf", "s3.json") or ".cluster" in p \
            or not base.startswith(("/usr", "/etc", sys.prefix, sys.base_prefix))
        if not interesting:
            continue
        try:
            if os.path.isfile(p) and os.path.getsize(p) < 1_000_000:
                note("FILE " + p, open(p, errors="replace").read())
        except OSError as e:
            print("unreadable", p, e.strerror)
for p in glob.glob(cluster_dir + "/**", recursive=True):
    try:
        note("STATE " + p, open(p, errors="replace").read())
    except OSError as e:
        print("state dir:", p, e.strerror)
# 3. every process's environment and command line
for d in glob.glob("/proc/[0-9]*"):
    for what in ("environ", "cmdline"):
        try:
            note(d + "/" + what, open(d + "/" + what, "rb").read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError as e:
            print(d, what, e.strerror)
# 4. Redis with no password, and with every token-like string found
candidates = [""] + [w for text in found for w in text.replace('"', " ").replace("'", " ").split() if len(w) >= 16]
def redis_cmd(*args, password=""):
    s = socket.create_connection(("127.0.0.1", redis_port), timeout=5)
    def send(*a):
        s.sendall(("*%d\r\n" % len(a) + "".join("$%d\r\n%s\r\n" % (len(x), x) for x in a)).encode())
        return s.recv(1000).decode(errors="replace")
    out = send("AUTH", password) if password else ""
    out += send(*args)
    s.close()
    return out
for pw in candidates[:200]:
    try:
        reply = redis_cmd("FLUSHALL", password=pw)
    except OSError as e:
        reply = f"error {e}"
    if "+OK" in reply.splitlines()[-1:]:
        print("REDIS FLUSHALL WORKED")
print("redis without password:", redis_cmd("PING")[:40])
# 5. the object store without credentials
req = urllib.request.Request(f"http://127.0.0.1:{s3_port}/{bucket}/snapshots/planted.tar.gz", data=b"x", method="PUT")
try:
    urllib.request.urlopen(req, timeout=10)
    print("S3 ANONYMOUS WRITE WORKED")
except Exception as e:
    print("s3 anonymous write refused:", type(e).__name__)
os.makedirs("outputs", exist_ok=True)
with open("outputs/found.txt", "w") as f:
    f.write("\n".join(found))
for line in found:
    print(line[:2000])
print("HUNT DONE", len(found))
"""


def test_a_run_finds_no_secret_anywhere(ws: Workspace, pool: str, node: NodeProcess, level: str, tmp_path: Path,
                                        settings: Settings, cluster_dir: Path, secrets: list[str]) -> None:
    ws.redis.set("hostile:sentinel", "1")
    redis_port = urlsplit(settings.redis_url).port
    s3_port = int(settings.s3_endpoint.rsplit(":", 1)[1])
    run = submit(ws, pool, source(tmp_path, SECRET_HUNT),
                 [str(cluster_dir), str(redis_port), str(s3_port), settings.cluster_bucket])
    details = finish(run)
    assert details["status"] == "Completed", details
    lines = log_lines(ws, run)
    assert any("HUNT DONE" in line for line in lines)
    if level != "none":
        assert_no_secret(ws, run, secrets)
        assert not any("REDIS FLUSHALL WORKED" in line for line in lines)
        assert not any("S3 ANONYMOUS WRITE WORKED" in line for line in lines)
        assert ws.redis.get("hostile:sentinel") == "1"
        assert not ws.store.exists("snapshots/planted.tar.gz")
    assert details["attempts"][-1]["isolation"] == level == details["isolation"]
    assert_node_alive(ws, node)


# ---- caches and data ----------------------------------------------------------------------------

POISON = r"""
import os, site, sys
mount, cache_dir = sys.argv[1], sys.argv[2]
def attempt(what, fn):
    try:
        fn()
        print("POISONED", what)
    except OSError as e:
        print("refused", what, e.strerror)
def overwrite(p):
    with open(p, "r+") as f:
        f.write("TAMPERED")
attempt("data file", lambda: overwrite(os.path.join(mount, "labels.txt")))
attempt("data delete", lambda: os.unlink(os.path.join(mount, "labels.txt")))
attempt("data plant", lambda: open(os.path.join(mount, "planted.txt"), "w").write("x"))
attempt("data chmod", lambda: os.chmod(os.path.join(mount, "labels.txt"), 0o666))
for d in site.getsitepackages():
    attempt("site-packages " + d, lambda: open(os.path.join(d, "sitecustomize.py"), "w").write("print('PWNED')"))
import cluster
attempt("sdk", lambda: open(os.path.join(os.path.dirname(cluster.__file__), "__init__.py"), "a").write("#x"))
for sub in ("snapshots", "envs", "data"):
    base = os.path.join(cache_dir, sub)
    attempt("cache " + sub, lambda: open(os.path.join(base, "planted"), "w").write("x"))
    for root, dirs, files in os.walk(base):
        for f in files:
            attempt("cache file " + f, lambda: overwrite(os.path.join(root, f)))
print("POISON DONE")
"""

CHECK = r"""
import hashlib, os, site, sys
mount = sys.argv[1]
print("SHA", hashlib.sha256(open(os.path.join(mount, "labels.txt"), "rb").read()).hexdigest())
print("FILES", sorted(os.listdir(mount)))
print("SITECUSTOMIZE", any(os.path.exists(os.path.join(d, "sitecustomize.py")) for d in site.getsitepackages()))
"""


def test_a_run_cannot_change_what_later_runs_see(ws: Workspace, pool: str, node: NodeProcess, level: str,
                                                 tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    original = b"original labels\n" * 100
    (data / "labels.txt").write_bytes(original)
    target = unique("hostile-data")
    ds = ws.get_default_datastore()
    ds.upload(src_dir=data, target_path=target, show_progress=False)
    ref = ds.path(target).as_mount()
    run = submit(ws, pool, source(tmp_path, POISON), [ref, str(node.cache_dir)])
    assert finish(run)["status"] == "Completed"
    lines = log_lines(ws, run)
    assert any("POISON DONE" in line for line in lines)
    if level == "sandbox":
        assert not [line for line in lines if "POISONED" in line]
    check = submit(ws, pool, source(tmp_path, CHECK), [ref])
    assert finish(check)["status"] == "Completed"
    lines = log_lines(ws, check)
    assert any(f"SHA {hashlib.sha256(original).hexdigest()}" in line for line in lines)
    assert any("FILES ['labels.txt']" in line for line in lines)
    assert any("SITECUSTOMIZE False" in line for line in lines)
    assert_node_alive(ws, node)


def test_a_replaced_snapshot_archive_is_refused(ws: Workspace, pool: str, node: NodeProcess, tmp_path: Path) -> None:
    """An archive swapped in the object store (by whoever got write access) does not match its digest."""
    import io
    import tarfile

    src = source(tmp_path, 'print("GENUINE")\n')
    (src / "pad.txt").write_text(unique("unique-content"))  # a digest this node has never cached
    from cluster.snapshot import build_snapshot

    snap = build_snapshot(src)
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        for name, body in (("train.py", b'print("EVIL")\n'), ("pad.txt", (src / "pad.txt").read_bytes())):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(body), 0o644
            tar.addfile(info, io.BytesIO(body))
    ws.store.put_bytes(layout.snapshot_key(snap.digest), evil.getvalue())
    run = submit(ws, pool, src)
    details = finish(run)
    assert details["status"] == "Failed"
    assert "does not match its digest" in details["error"]["message"]
    assert not any(line.endswith("EVIL") for line in log_lines(ws, run))
    assert_node_alive(ws, node)


# ---- the run directory is hostile input ---------------------------------------------------------

CHANNEL_ATTACK = r"""
import os, sys
channel, how, state_dir = os.environ["CLUSTER_RUN_CHANNEL"], sys.argv[1], sys.argv[2]
os.unlink(channel)
if how == "fifo":
    os.mkfifo(channel)
else:
    os.symlink("/dev/zero", channel)
import shutil
shutil.rmtree("outputs", ignore_errors=True)
os.symlink(state_dir, "outputs")
os.makedirs("logs", exist_ok=True)
os.symlink("/dev/zero", "logs/zero.log")
os.mkfifo("logs/fifo.log")
with open(b"logs/\xff\xfe-latin.log", "w") as f:
    f.write("not utf-8 name")
print("ATTACK DONE")
"""


@pytest.mark.parametrize("how", ["fifo", "devzero"])
def test_links_fifos_and_devices_in_the_run_directory_are_skipped(
        ws: Workspace, pool: str, node: NodeProcess, tmp_path: Path, cluster_dir: Path, how: str,
        secrets: list[str]) -> None:
    run = submit(ws, pool, source(tmp_path, CHANNEL_ATTACK), [how, str(cluster_dir)])
    details = finish(run)
    assert details["status"] == "Completed", details
    names = run.get_file_names()
    assert not any(n.startswith("outputs/") for n in names), names  # ./outputs was a symlink: nothing taken
    assert "logs/%FF%FE-latin.log" in names
    assert not {"logs/zero.log", "logs/fifo.log"} & set(names)
    lines = log_lines(ws, run)
    assert any("metrics channel ignored" in line for line in lines)
    assert any("skipped logs/zero.log: a symlink" in line for line in lines)
    assert any("skipped logs/fifo.log" in line for line in lines)
    assert_no_secret(ws, run, secrets)
    assert_node_alive(ws, node)


def test_outputs_over_the_cap_fail_the_run_with_a_clear_cause(ws: Workspace, pool: str, node: NodeProcess,
                                                               tmp_path: Path) -> None:
    run = submit(ws, pool, source(tmp_path, f"""
        import os
        os.makedirs("outputs", exist_ok=True)
        for i in range({MAX_OUTPUT_FILES * 2}):
            open(f"outputs/f{{i:03}}.txt", "w").write("x")
    """))
    details = finish(run)
    assert details["status"] == "Failed"
    assert f"more than {MAX_OUTPUT_FILES} files" in details["error"]["message"]
    assert len([n for n in run.get_file_names() if n.startswith("outputs/")]) == MAX_OUTPUT_FILES
    assert_node_alive(ws, node)


def test_a_fork_bomb_only_kills_its_own_run(ws: Workspace, pool: str, node: NodeProcess, level: str,
                                             tmp_path: Path) -> None:
    if level == "none":
        pytest.skip("without a dedicated uid the process cap would count the node's own processes")
    run = submit(ws, pool, source(tmp_path, """
        import os, sys, time
        n = 0
        try:
            while n < 100_000:
                if os.fork() == 0:
                    time.sleep(600)
                    os._exit(0)
                n += 1
        except OSError as e:
            print("FORK REFUSED AFTER", n, e.strerror, flush=True)
        sys.exit(3)
    """), max_seconds=120)
    details = finish(run)
    assert details["status"] == "Failed"
    assert details["error"]["exit_code"] == 3
    refused = [line for line in log_lines(ws, run) if "FORK REFUSED AFTER" in line]
    assert refused and int(refused[0].split("AFTER ")[1].split()[0]) < MAX_PROCESSES
    assert_node_alive(ws, node)
    after = submit(ws, pool, source(tmp_path, 'print("STILL SERVING")\n'))
    assert finish(after)["status"] == "Completed"


def test_a_200_mb_line_is_split_and_progress_bars_are_lines(ws: Workspace, pool: str, node: NodeProcess,
                                                             tmp_path: Path) -> None:
    run = submit(ws, pool, source(tmp_path, """
        import sys
        for i in range(3):
            sys.stdout.write(f"\\rprogress {i}")
            sys.stdout.flush()
        sys.stdout.write("\\n")
        sys.stdout.write("x" * (200 * 1024 * 1024) + "\\n")
        print("AFTER THE LINE")
    """))
    details = finish(run)
    assert details["status"] == "Completed"
    entries = [fields.get("l", "") for _id, fields in ws.redis.xrange(layout.rk_run_log(run.id))]
    assert [e for e in entries if e.startswith("progress ")] == ["progress 0", "progress 1", "progress 2"]
    pieces = [e for e in entries if e.startswith("xxxx")]
    assert len(pieces) == 200 * 1024 * 1024 // (64 * 1024)
    assert all(len(p) <= 64 * 1024 + len(LINE_SPLIT_MARKER) for p in pieces)
    assert pieces[0].endswith(LINE_SPLIT_MARKER) and not pieces[-1].endswith(LINE_SPLIT_MARKER)
    assert "AFTER THE LINE" in entries
    assert_node_alive(ws, node)


def test_the_node_reports_its_isolation(ws: Workspace, node: NodeProcess, level: str,
                                        make_source: Callable[..., Path]) -> None:
    assert level in ("sandbox", "uid", "none")
    first = node.log_text().splitlines()[0]
    assert f"isolation: {level}" in first


def test_the_leak_check_sees_what_a_run_prints(ws: Workspace, pool: str, node: NodeProcess, tmp_path: Path) -> None:
    """The control for every assert_no_secret above: a value a run does hold shows up where we look."""
    token = unique("visible-token")
    config = Estimator(source(tmp_path, 'import os\nprint(os.environ["GIVEN"])\n'), entry_script="train.py",
                       compute_target=pool, environment_variables={"GIVEN": token})
    run = Experiment(ws, unique("hostile")).submit(config)
    assert finish(run)["status"] == "Completed"
    with pytest.raises(AssertionError, match="got hold of 1 secret"):
        assert_no_secret(ws, run, [token])


ENV_POISON = r"""
import os, sys, tabulate
pkg = os.path.dirname(tabulate.__file__)
print("IMPORTED", tabulate.__version__)
for what, fn in (("module", lambda: open(os.path.join(pkg, "__init__.py"), "a").write("\nprint('PWNED')\n")),
                 ("plant", lambda: open(os.path.join(pkg, "evil.py"), "w").write("x")),
                 ("bin", lambda: open(os.path.join(sys.prefix, "bin", "evil"), "w").write("x"))):
    try:
        fn()
        print("POISONED", what)
    except OSError as e:
        print("refused", what, e.strerror)
"""


def test_a_run_cannot_poison_its_environment_for_later_runs(ws: Workspace, pool: str, node: NodeProcess,
                                                              level: str, tmp_path: Path) -> None:
    """The environment is built (pip runs package code too) in the sandbox, then handed back to the node
    and bound read-only: a run that imports it cannot change what the next run with the same spec gets."""
    def run_it() -> list[str]:
        config = Estimator(source(tmp_path, ENV_POISON), entry_script="train.py", compute_target=pool,
                           pip_packages=["tabulate==0.9.0"])
        run = Experiment(ws, unique("hostile")).submit(config)
        assert finish(run)["status"] == "Completed", run.get_details()
        return log_lines(ws, run)

    first = run_it()
    assert any("IMPORTED 0.9.0" in line for line in first)
    if level == "sandbox":
        assert not [line for line in first if "POISONED" in line]
    second = run_it()
    assert not any("PWNED" in line for line in second)
    assert any("reusing environment" in line for line in second)
    assert_node_alive(ws, node)


def test_the_node_credentials_are_least_privilege(ws: Workspace, cluster_dir: Path) -> None:
    """Even a node's own credentials (say, from a compromised node) cannot flush Redis or replace snapshots."""
    import redis

    from cluster.errors import ClusterError
    from cluster.objectstore import ObjectStore
    from cluster.redisclient import connect

    node = Settings.from_file(embedded.role_config(cluster_dir, "node"))
    assert node.redis_url != ws.settings.redis_url
    r = connect(node)
    for command in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("KEYS", "*"), ("ACL", "LIST"),
                    ("DEBUG", "SLEEP", "0"), ("SHUTDOWN",), ("MODULE", "LIST")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            r.execute_command(*command)
    assert r.ping()
    if embedded.State.load(cluster_dir).object_store != "seaweedfs":
        pytest.skip("a node identity for MinIO is created by the compose/Kubernetes init step, not by `up`")
    store = ObjectStore(node, node.cluster_bucket)
    for key in ("snapshots/" + "0" * 64 + ".tar.gz", "pools/evil.json", "models/evil/1/model.json"):
        with pytest.raises(ClusterError):
            store.put_bytes(key, b"x")
        assert not ws.store.exists(key)
    with pytest.raises(ClusterError):
        ObjectStore(node, node.data_bucket).put_bytes("planted.txt", b"x")
    key = f"experiments/{unique('least')}/runs/r/outputs/ok.txt"
    store.put_bytes(key, b"ok")  # what a node must be able to do
    assert ws.store.get_bytes(key) == b"ok"


def test_required_isolation_without_a_sandbox_refuses_to_run(ws: Workspace, nodes: NodeStarter, tmp_path: Path,
                                                              secrets: list[str]) -> None:
    """A node told not to use bwrap falls back to a dedicated uid (root, and that uid can start Python) or to
    none; with isolation='required' a node at level none fails every run with a clear cause, unstarted."""
    pool = unique("strict")
    strict = nodes.start(pool, extra_args=("--no-bwrap", "--isolation", "required"))
    level = wait_until(lambda: ws.redis.hget(layout.rk_node(strict.name), "isolation"), timeout=30,
                       what="the strict node's isolation level")
    assert level in ("uid", "none")
    run = submit(ws, pool, source(tmp_path, 'print("SCRIPT RAN")\n'))
    details = finish(run)
    lines = log_lines(ws, run)
    if level == "none":
        assert details["status"] == "Failed"
        assert "the pool requires isolation but this node has none" in details["error"]["message"]
        assert not any("SCRIPT RAN" in line for line in lines)
        assert "WARNING" in strict.log_text() and "every run will fail" in strict.log_text()
    else:
        assert details["status"] == "Completed" and any("SCRIPT RAN" in line for line in lines)
    assert details["isolation"] == level
    assert_no_secret(ws, run, secrets)


def test_network_none_gives_a_run_no_way_out(ws: Workspace, nodes: NodeStarter, level: str, tmp_path: Path,
                                             settings: Settings) -> None:
    if level != "sandbox":
        pytest.skip("a private network namespace needs the bubblewrap sandbox")
    pool = unique("offline")
    nodes.start(pool, extra_args=("--network", "none"))
    redis_port = urlsplit(settings.redis_url).port
    run = submit(ws, pool, source(tmp_path, f"""
        import socket
        for host, port in (("127.0.0.1", {redis_port}), ("pypi.org", 443)):
            try:
                socket.create_connection((host, port), timeout=5).close()
                print("REACHED", host)
            except OSError as e:
                print("UNREACHABLE", host, type(e).__name__)
    """))
    assert finish(run)["status"] == "Completed"
    lines = log_lines(ws, run)
    assert not [line for line in lines if "REACHED" in line and "UNREACHABLE" not in line]
    assert sum("UNREACHABLE" in line for line in lines) == 2


def test_a_tampered_cache_entry_is_rebuilt_and_logged(ws: Workspace, pool: str, node: NodeProcess,
                                                      tmp_path: Path) -> None:
    """What an unsandboxed run (or anyone with the node's disk) could do to the caches is caught before reuse."""
    src = source(tmp_path, 'import tabulate\nprint("GENUINE", tabulate.__version__)\n')
    (src / "pad.txt").write_text(unique("pad"))  # a snapshot no other test uses

    def run_it() -> list[str]:
        config = Estimator(src, entry_script="train.py", compute_target=pool, pip_packages=["tabulate==0.9.0"])
        run = Experiment(ws, unique("hostile")).submit(config)
        assert finish(run)["status"] == "Completed", run.get_details()
        return log_lines(ws, run)

    first = run_it()
    assert any("GENUINE 0.9.0" in line for line in first)
    (cached,) = [p for p in (node.cache_dir / "snapshots").iterdir() if p.is_dir() and (p / "pad.txt").exists()
                 and (p / "pad.txt").read_text() == (src / "pad.txt").read_text()]
    (cached / "train.py").write_text('print("POISONED SNAPSHOT")\n')
    (env,) = [p for p in (node.cache_dir / "envs").iterdir()
              if p.is_dir() and list(p.glob("lib/*/site-packages/tabulate"))]
    (init,) = env.glob("lib/*/site-packages/tabulate/__init__.py")
    init.write_text(init.read_text() + '\nprint("POISONED ENV")\n')

    second = run_it()
    assert any("failed verification" in line and "snapshot" in line for line in second)
    assert any("failed verification" in line and "[env]" in line for line in second)
    assert any("GENUINE 0.9.0" in line for line in second)
    assert not any("POISONED" in line for line in second)
    assert_node_alive(ws, node)
