"""The 500-run soak: does Redis memory and node disk stay bounded as runs keep finishing?

Starts a private embedded cluster with two static nodes, submits ``--runs`` runs in batches (each writes an
output file, a few log lines and metrics), waits for each batch, and samples after it:

* Redis: ``used_memory`` and the number of keys;
* node disk: bytes and files under the nodes' work folders and their shared cache.

Finished runs' Redis keys expire ``CLUSTER_FINISHED_TTL_SECONDS`` after they finish (an hour by default; the soak
sets ``--ttl``, 20 s, so that the plateau shows within the soak); a last sample is taken once that has passed.
Prints a table and writes ``bench/results/soak-<time>.json``.

    python bench/soak.py [--runs 500] [--batch 50] [--ttl 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCRIPT = """
import os, sys
from cluster import Run
run = Run.get_context()
os.makedirs("outputs", exist_ok=True)
with open("outputs/result.txt", "w") as f:
    f.write("x" * 4096)
for i in range(20):
    print("line", i, "of a run's log, long enough to take some room in a stream " * 2)
    run.log("loss", 1.0 / (i + 1))
run.log("accuracy", 0.9)
"""


def disk(paths: list[Path]) -> tuple[int, int]:
    total = files = 0
    for root in paths:
        for base, _dirs, names in os.walk(root):
            for name in names:
                try:
                    total += os.lstat(os.path.join(base, name)).st_size
                    files += 1
                except OSError:
                    pass
    return total, files


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--ttl", type=int, default=20, help="seconds Redis keeps a finished run's keys")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    os.environ["CLUSTER_FINISHED_TTL_SECONDS"] = str(args.ttl)  # inherited by the nodes and the controller

    from cluster import Estimator, Experiment, Workspace, embedded, layout

    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        state_dir = Path(tmp) / ".cluster"
        settings = embedded.up(state_dir, echo=lambda _m: None, ui=False)
        try:
            embedded.start_workers(state_dir, "soak", 2)
            ws = Workspace(settings)
            deadline = time.monotonic() + 60
            while len(ws.redis.smembers(layout.RK_NODES)) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)  # both nodes heartbeating before the first submit
            src = Path(tmp) / "src"
            src.mkdir()
            (src / "train.py").write_text(SCRIPT)
            exp = Experiment(ws, "soak")
            node_paths = [state_dir / "nodes", state_dir / "node-cache"]

            def sample(done: int, label: str) -> None:
                info: Any = ws.redis.info("memory")
                nbytes, nfiles = disk(node_paths)
                row = {"runs_done": done, "when": label, "redis_used_memory": int(info["used_memory"]),
                       "redis_keys": int(ws.redis.dbsize()), "node_disk_bytes": nbytes, "node_disk_files": nfiles,
                       "t": round(time.monotonic() - start, 1)}
                samples.append(row)
                print(f"{done:>5} runs  {label:<14} redis {row['redis_used_memory'] / 1e6:7.2f} MB "
                      f"{row['redis_keys']:>6} keys   node disk {nbytes / 1e6:7.2f} MB {nfiles:>6} files", flush=True)

            start = time.monotonic()
            sample(0, "start")
            done = 0
            statuses: dict[str, int] = {}
            while done < args.runs:
                n = min(args.batch, args.runs - done)
                runs = [exp.submit(Estimator(src, "train.py", compute_target="soak")) for _ in range(n)]
                for run in runs:
                    status = run.wait_for_completion(timeout=600, raise_on_error=False)["status"]
                    statuses[status] = statuses.get(status, 0) + 1
                done += n
                sample(done, "after batch")
            time.sleep(args.ttl + 5)
            sample(done, f"after ttl {args.ttl}s")
        finally:
            embedded.down(state_dir, echo=lambda _m: None)
    peak_mem = max(s["redis_used_memory"] for s in samples)
    result = {"runs": args.runs, "batch": args.batch, "ttl_seconds": args.ttl, "statuses": statuses,
              "samples": samples, "redis_peak_bytes": peak_mem,
              "redis_growth_bytes": samples[-1]["redis_used_memory"] - samples[0]["redis_used_memory"],
              "node_disk_peak_bytes": max(s["node_disk_bytes"] for s in samples),
              "node_disk_growth_bytes": samples[-1]["node_disk_bytes"] - samples[1]["node_disk_bytes"]}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"statuses {statuses}; Redis peak {peak_mem / 1e6:.2f} MB, growth start->end "
          f"{result['redis_growth_bytes'] / 1e6:+.2f} MB; node disk peak "
          f"{result['node_disk_peak_bytes'] / 1e6:.2f} MB, growth after the first batch "
          f"{result['node_disk_growth_bytes'] / 1e6:+.2f} MB -> {path}")
    return 0 if statuses.get("Completed", 0) == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
