"""On the client host: the tutorial's remote run (small MNIST), then a 2-run grid sweep. Prints JSON."""
import json
import shutil
import sys
from pathlib import Path

from cluster import Estimator, Experiment, Workspace
from cluster.sweep import GridParameterSampling, HyperDriveConfig, PrimaryMetricGoal, choice

pool, example = sys.argv[1], Path(sys.argv[2])
source = Path("sklearn-mnist")  # the client's own copy of the source folder
shutil.copytree(example, source, dirs_exist_ok=True)
ws = Workspace.from_config()
exp = Experiment(workspace=ws, name="sklearn-mnist")
ds = ws.get_default_datastore()
est = Estimator(source_directory=str(source), entry_script="train.py", compute_target=pool,
                script_params={"--data-folder": ds.as_mount(), "--regularization": 0.8, "--train-limit": 2000},
                conda_packages=["scikit-learn"])
run = exp.submit(config=est)
details = run.wait_for_completion(show_output=False, timeout=240)
result = {"run": {"id": run.id, "details": details, "metrics": run.get_metrics(), "files": run.get_file_names()}}

sweep_est = Estimator(source_directory=str(source), entry_script="train.py", compute_target=pool,
                      script_params={"--data-folder": ds.as_mount(), "--train-limit": 1000})
hd = HyperDriveConfig(estimator=sweep_est, hyperparameter_sampling=GridParameterSampling(
                          {"--regularization": choice(0.5, 1.0)}),
                      primary_metric_name="accuracy", primary_metric_goal=PrimaryMetricGoal.MAXIMIZE,
                      max_total_runs=2, max_concurrent_runs=2)
hd_run = exp.submit(hd)
hd_details = hd_run.wait_for_completion(show_output=False, timeout=300)
children = [{"id": c.id, "status": c.get_status(), "details": c.get_details(), "metrics": c.get_metrics()}
            for c in hd_run.get_children()]
result["sweep"] = {"id": hd_run.id, "status": hd_details["status"], "children": children,
                   "best": hd_run.get_best_run_by_primary_metric().id}
print(json.dumps(result, default=str))
