"""The tutorial's hyperparameter sweep: tune the regularization rate on MNIST, then register the best model.

Sixteen child runs of ``sklearn-mnist/train.py``, ``--regularization`` drawn log-uniformly from [e**-5, e**1],
four at a time on the autoscaled pool 'cpucluster' (created if missing), runs that fall behind stopped early by
a bandit policy. Run from the repository root after `cluster up`:

    python examples/sklearn-mnist/sweep.py [--train-limit N]

MNIST must be in the default datastore under ``mnist/`` (the tutorial uploads it); if it is not, it is uploaded
from $MNIST_DIR, or downloaded (checksums verified) first. ``--train-limit 2000`` makes each child take seconds.
The sweep is driven by the controller: interrupt this script and the sweep goes on (`cluster sweep show ID`).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from cluster import ComputeTarget, Estimator, Experiment, NodePool, Workspace
from cluster.mnist import FILES, fetch_mnist
from cluster.sweep import (
    BanditPolicy,
    HyperDriveConfig,
    PrimaryMetricGoal,
    RandomParameterSampling,
    loguniform,
)

HERE = Path(__file__).resolve().parent


def ensure_mnist(ws: Workspace) -> None:
    """MNIST under mnist/ in the default datastore: uploaded from $MNIST_DIR or a verified download if missing."""
    ds = ws.get_default_datastore()
    have = set(ds.list("mnist"))
    if all(f"mnist/{name}" in have for name in FILES):
        return
    with tempfile.TemporaryDirectory() as tmp:
        fetch_mnist(tmp, source=os.environ.get("MNIST_DIR") or None, show_progress=True)
        ds.upload(src_dir=tmp, target_path="mnist", overwrite=True, show_progress=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-limit", type=int, default=0, help="train each child on the first N images (0: all)")
    parser.add_argument("--max-total-runs", type=int, default=16)
    parser.add_argument("--max-concurrent-runs", type=int, default=4)
    parser.add_argument("--max-nodes", type=int, default=4, help="the pool's maximum size if it is created here")
    parser.add_argument("--experiment", default="sklearn-mnist-sweep")
    parser.add_argument("--compute", default=os.environ.get("AML_COMPUTE_CLUSTER_NAME", "cpucluster"))
    parser.add_argument("--model-name", default="sklearn_mnist")
    args = parser.parse_args()

    ws = Workspace.from_config()
    ensure_mnist(ws)
    ds = ws.get_default_datastore()

    # the autoscaled pool (scales from zero as children queue, back to zero when idle)
    if args.compute in ws.compute_targets:
        compute_target = ws.compute_targets[args.compute]
        print("found compute target. just use it.", args.compute)
    else:
        print("creating a new compute target...")
        config = NodePool.provisioning_configuration(vm_size="STANDARD_D2_V2", min_nodes=0, max_nodes=args.max_nodes,
                                                     idle_seconds_before_scaledown=120)
        compute_target = ComputeTarget.create(ws, args.compute, config)
        compute_target.wait_for_completion(show_output=True, timeout_in_minutes=20)

    script_params: dict[str, object] = {"--data-folder": ds.as_mount()}
    if args.train_limit:
        script_params["--train-limit"] = args.train_limit
    est = Estimator(source_directory=str(HERE / "sklearn-mnist"), entry_script="train.py",
                    script_params=script_params, compute_target=compute_target, conda_packages=["scikit-learn"])

    # the sweep: --regularization sampled log-uniformly, laggards stopped by a bandit policy
    sampling = RandomParameterSampling({"--regularization": loguniform(-5, 1)}, seed=7)
    hd = HyperDriveConfig(estimator=est, hyperparameter_sampling=sampling,
                          policy=BanditPolicy(evaluation_interval=1, slack_factor=0.1),
                          primary_metric_name="accuracy", primary_metric_goal=PrimaryMetricGoal.MAXIMIZE,
                          max_total_runs=args.max_total_runs, max_concurrent_runs=args.max_concurrent_runs)
    exp = Experiment(ws, args.experiment)
    hd_run = exp.submit(hd)
    print("sweep", hd_run.id, "submitted; the controller drives it")
    hd_run.wait_for_completion(show_output=True)

    best = hd_run.get_best_run_by_primary_metric()
    if best is None:
        raise SystemExit("no child run reported 'accuracy': see `cluster sweep show " + hd_run.id + "`")
    print(best.get_details()["arguments"], best.get_metrics()["accuracy"])
    model = best.register_model(model_name=args.model_name, model_path="outputs/sklearn_mnist_model.pkl")
    print(model.name, model.id, model.version, sep="\t")


if __name__ == "__main__":
    main()
