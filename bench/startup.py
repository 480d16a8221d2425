"""Benchmark: how fast a run starts and recovers, next to a raw Celery round trip measured in the same run.

    python bench/startup.py [--repeat 5]

Figures (medians):
  baseline  raw Celery: send_task -> a trivial task starts on an already-running solo worker
  warm      submit() -> first line of train.py, an idle node waiting            (target <= 0.3 s)
  cold      submit() -> first line of train.py, the pool at zero nodes          (target <= 3 s)
  recovery  SIGKILL of a busy node -> the run's first line again on another node (target <= 10 s)

Every figure is printed with its ratio to the baseline. Runs on its own embedded cluster in a temp folder.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster import ComputeTarget, Estimator, Experiment, NodePool, Workspace, embedded, layout

SCRIPT = """import time, sys
print("FIRST", repr(time.time()), flush=True)
seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 0.0
time.sleep(seconds)
"""

RAW_WORKER = textwrap.dedent("""
    import sys, time
    from celery import Celery
    import redis
    url = sys.argv[1]
    app = Celery("raw", broker=url)
    app.conf.update(task_serializer="json", accept_content=["json"], task_ignore_result=True,
                    worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
    r = redis.Redis.from_url(url)
    @app.task(name="raw.ping")
    def ping(key):
        r.set(key, repr(time.time()))
    app.worker_main(["worker", "--pool=solo", "-Q", "raw", "--without-gossip", "--without-mingle",
                     "--loglevel=WARNING"])
""")


def first_line_time(run, after_attempt: int = 0, timeout: float = 120) -> float:
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


def baseline(ws: Workspace, state_dir: Path, repeat: int) -> list[float]:
    proc = subprocess.Popen([sys.executable, "-c", RAW_WORKER, ws.settings.redis_url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        from celery import Celery

        app = Celery("raw", broker=ws.settings.redis_url, set_as_current=False)
        app.conf.update(task_serializer="json", accept_content=["json"])
        out = []
        for i in range(repeat + 1):
            key = f"bench:raw:{i}"
            t0 = time.time()
            app.send_task("raw.ping", args=[key], queue="raw")
            while not ws.redis.get(key):
                time.sleep(0.002)
            if i:  # the first one waits for the worker to boot
                out.append(float(ws.redis.get(key)) - t0)
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def wait_nodes(ws: Workspace, pool: str, predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [ws.redis.hget(layout.rk_node(n), "state") for n in ws.redis.smembers(layout.RK_NODES)
                  if ws.redis.hget(layout.rk_node(n), "pool") == pool]
        if predicate(states):
            return
        time.sleep(0.05)
    raise RuntimeError(f"pool {pool} never reached the expected node states")


def main() -> int:
    parser = argparse.ArgumentParser(description="submit-to-first-line and recovery benchmark")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tmp) / ".cluster"
        embedded.up(state_dir, echo=lambda _m: None)
        try:
            ws = Workspace.from_config(state_dir / "config.json")
            src = Path(tmp) / "src"
            src.mkdir()
            (src / "train.py").write_text(SCRIPT)
            exp = Experiment(ws, "bench")

            base = baseline(ws, state_dir, args.repeat)

            # warm: one node idle and waiting; the snapshot already cached on it
            warm_pool = ComputeTarget.create(ws, "warm", NodePool.provisioning_configuration(
                min_nodes=1, max_nodes=1, idle_seconds_before_scaledown=600))
            wait_nodes(ws, "warm", lambda s: s == ["idle"])
            est = Estimator(src, "train.py", compute_target=warm_pool)
            exp.submit(est).wait_for_completion()
            warm = []
            for _ in range(args.repeat):
                wait_nodes(ws, "warm", lambda s: s == ["idle"])
                t0 = time.time()
                run = exp.submit(est)
                warm.append(first_line_time(run) - t0)
                run.wait_for_completion()

            # cold: the pool at zero nodes
            cold_pool = ComputeTarget.create(ws, "cold", NodePool.provisioning_configuration(
                min_nodes=0, max_nodes=1, idle_seconds_before_scaledown=0))
            cold_est = Estimator(src, "train.py", compute_target=cold_pool)
            cold = []
            for _ in range(args.repeat):
                wait_nodes(ws, "cold", lambda s: s == [])
                t0 = time.time()
                run = exp.submit(cold_est)
                cold.append(first_line_time(run) - t0)
                run.wait_for_completion()

            # recovery: SIGKILL the busy node (and its script); an idle node takes the run over
            rec_pool = ComputeTarget.create(ws, "recover", NodePool.provisioning_configuration(
                min_nodes=2, max_nodes=2, idle_seconds_before_scaledown=600))
            rec_est = Estimator(src, "train.py", script_params={"30": None}, compute_target=rec_pool)
            recovery = []
            for _ in range(args.repeat):
                wait_nodes(ws, "recover", lambda s: sorted(s) == ["idle", "idle"])
                run = exp.submit(rec_est)
                first_line_time(run)
                node = run.get_details()["node"]
                mp = next(p for p in embedded.State.load(state_dir).processes if p.name == node)
                victims = [psutil.Process(mp.pid), *psutil.Process(mp.pid).children(recursive=True)]
                t0 = time.time()
                for v in victims:
                    v.send_signal(signal.SIGKILL)
                recovery.append(first_line_time(run, after_attempt=1) - t0)
                run.cancel()
                run.wait_for_completion(raise_on_error=False)
        finally:
            embedded.down(state_dir, echo=lambda _m: None)

    b = statistics.median(base)
    print(f"\n{'figure':<10} {'median':>9} {'min':>9} {'max':>9} {'target':>8} {'x baseline':>11}")
    for name, values, target in (("baseline", base, None), ("warm", warm, 0.3), ("cold", cold, 3.0),
                                 ("recovery", recovery, 10.0)):
        m = statistics.median(values)
        verdict = "" if target is None else ("  ok" if m <= target else "  OVER TARGET")
        tgt = "" if target is None else f"{target:.1f}s"
        print(f"{name:<10} {m:>8.3f}s {min(values):>8.3f}s {max(values):>8.3f}s {tgt:>8} {m / b:>10.1f}x{verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
