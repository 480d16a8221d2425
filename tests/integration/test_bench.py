"""The benchmark harness at tiny sizes, so it cannot rot. No figure is asserted: only that every part ran on
a real embedded cluster and reported each figure with its baseline, ratio and repetitions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.suite import PARTS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def test_every_part_reports_figures_against_a_baseline(tmp_path: Path) -> None:
    mnist = os.environ.get("MNIST_DIR", str(ROOT.parent / "shared" / "data" / "mnist"))
    if not Path(mnist).is_dir():
        pytest.skip("real MNIST is needed (set MNIST_DIR)")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "suite.py"), "--tiny", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "MNIST_DIR": mnist})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (result,) = tmp_path.glob("*.json")
    data = json.loads(result.read_text())
    assert data["mode"] == "tiny" and data["machine"]["cores"] >= 1 and data["machine"]["python"]
    parts = {f["part"] for f in data["figures"]}
    assert parts == set(PARTS)
    for f in data["figures"]:
        assert f["baseline"] and f["baseline_value"] > 0 and f["reps"] >= 1, f
        assert f["ratio"] == pytest.approx(f["value"] / f["baseline_value"])
    figures = {f["figure"] for f in data["figures"]}
    assert {"joblib.Parallel(n_jobs=2)", "warm submit -> first line (median)", "raw runs per second",
            "node SIGSTOP -> script restarted (median)"} <= figures
    # every run's time is broken down by phase
    assert {f"phase {p} (median)" for p in ("queue", "claim", "start", "script", "finalize")} <= figures
    assert "results:" in proc.stdout
