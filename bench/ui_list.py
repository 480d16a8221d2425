"""How long the dashboard's server takes to list an experiment of 1,000 runs (the issue asks < 300 ms).

Starts a throwaway embedded cluster (real Redis, real S3 server), writes 1,000 finished runs the way nodes
leave them, then times, in the dashboard process (no network in the figure):

* cold     -- the first listing ever: every run's record and metrics read once, the index written
* warm     -- later listings: one listing of the experiment's folder + the index in memory
* restart  -- a new dashboard process: the index read back from the object store
* page     -- GET /experiments/<name> (sorted by a metric, first page rendered), warm
* api      -- GET /api/runs?experiment=<name>&sort=metric:accuracy, warm

Usage: python bench/ui_list.py [--runs 1000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cluster import Workspace, embedded  # noqa: E402
from cluster.settings import Settings  # noqa: E402
from cluster.ui.views import Views  # noqa: E402
from tests.ui.support import make_finished_runs  # noqa: E402


def timed(fn, repeat: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from cluster.ui.app import create_app

    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / ".cluster"
        embedded.up(state, echo=lambda _m: None, controller=False, ui=False)
        try:
            ws = Workspace(Settings.from_file(state / "config.json"))
            t = time.perf_counter()
            make_finished_runs(ws, "bench", args.runs)
            print(f"wrote {args.runs} finished runs in {time.perf_counter() - t:.1f}s")
            views = Views(ws)
            rows: dict[str, list[float]] = {}
            rows["cold"] = timed(lambda: views.runs("bench", limit=50), 1)
            rows["warm"] = timed(lambda: views.runs("bench", sort="metric:accuracy", limit=50), args.repeat)
            rows["restart"] = [timed(lambda: Views(ws).runs("bench", limit=50), 1)[0] for _ in range(args.repeat)]
            client = TestClient(create_app(ws, "t"), headers={"Authorization": "Bearer t"})
            client.get("/api/runs", params={"experiment": "bench"})  # the app's own index, warmed once
            rows["page"] = timed(lambda: client.get("/experiments/bench", params={"sort": "metric:accuracy"})
                                 .raise_for_status(), args.repeat)
            rows["api"] = timed(lambda: client.get("/api/runs", params={"experiment": "bench",
                                                                         "sort": "metric:accuracy"})
                                .raise_for_status(), args.repeat)
            print(f"{'listing':<10}{'median':>10}{'min':>10}{'max':>10}   target 0.300s (warm, restart, page, api)")
            for name, values in rows.items():
                print(f"{name:<10}{statistics.median(values):>9.3f}s{min(values):>9.3f}s{max(values):>9.3f}s")
        finally:
            embedded.down(state, echo=lambda _m: None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
