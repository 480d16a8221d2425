"""The Azure ML tutorial "Train an image classification model" (part 1), on this project's embedded cluster.

Each `# %%` cell is one step of the seed notebook; only the imports changed. Run from the repository root
after `cluster up` (or just `make demo`). Set MNIST_DIR to import MNIST from a folder instead of downloading.

    python examples/sklearn-mnist/tutorial.py [--train-limit N] [--delete-compute]

The notebook reads no command line: TUTORIAL_TRAIN_LIMIT=N sets the training subset there (CI runs it so).
"""

# %% 1. Set up: numpy, matplotlib and the SDK; the workspace from the config file
import argparse
import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from sklearn.linear_model import LogisticRegression

from cluster import ComputeTarget, Estimator, Experiment, NodePool, Workspace
from cluster.mnist import fetch_mnist, load_data
from cluster.widgets import RunDetails

HERE = Path(__file__).resolve().parent
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--train-limit", type=int, default=int(os.environ.get("TUTORIAL_TRAIN_LIMIT", 0)),
                    help="train on the first N images only (0: all 60,000; default $TUTORIAL_TRAIN_LIMIT)")
parser.add_argument("--delete-compute", action="store_true", help="step 14: delete the compute target at the end")
parser.add_argument("--out", type=Path, default=Path("tutorial-outputs"), help="where the PNG and model go")
args, _unknown = parser.parse_known_args()
args.out.mkdir(parents=True, exist_ok=True)

ws = Workspace.from_config()
print(ws.name, ws.location, ws.resource_group, sep="\t")

# %% 2. Create an experiment
experiment_name = "sklearn-mnist"
exp = Experiment(workspace=ws, name=experiment_name)

# %% 3. Create or attach a compute target (a pool that scales 0..4 nodes)
compute_name = os.environ.get("AML_COMPUTE_CLUSTER_NAME", "cpucluster")
compute_min_nodes = int(os.environ.get("AML_COMPUTE_CLUSTER_MIN_NODES", 0))
compute_max_nodes = int(os.environ.get("AML_COMPUTE_CLUSTER_MAX_NODES", 4))
vm_size = os.environ.get("AML_COMPUTE_CLUSTER_SKU", "STANDARD_D2_V2")

if compute_name in ws.compute_targets:
    compute_target = ws.compute_targets[compute_name]
    print("found compute target. just use it. " + compute_name)
else:
    print("creating a new compute target...")
    provisioning_config = NodePool.provisioning_configuration(vm_size=vm_size, min_nodes=compute_min_nodes,
                                                              max_nodes=compute_max_nodes)
    compute_target = ComputeTarget.create(ws, compute_name, provisioning_config)
    compute_target.wait_for_completion(show_output=True, min_node_count=None, timeout_in_minutes=20)
print(compute_target.status.serialize())

# %% 4. Get MNIST into ./data (checksums verified) and look at 30 random digits
data_folder = Path("data")
fetch_mnist(data_folder, source=os.environ.get("MNIST_DIR") or None, show_progress=True)
X_train = load_data(data_folder / "train-images-idx3-ubyte.gz", False) / 255.0
X_test = load_data(data_folder / "t10k-images-idx3-ubyte.gz", False) / 255.0
y_train = load_data(data_folder / "train-labels-idx1-ubyte.gz", True).reshape(-1)
y_test = load_data(data_folder / "t10k-labels-idx1-ubyte.gz", True).reshape(-1)

count = 0
sample_size = 30
plt.figure(figsize=(16, 6))
for i in np.random.permutation(X_train.shape[0])[:sample_size]:
    count = count + 1
    plt.subplot(1, sample_size, count)
    plt.axhline("")
    plt.axvline("")
    plt.text(x=10, y=-10, s=y_train[i], fontsize=18)
    plt.imshow(X_train[i].reshape(28, 28), cmap=plt.cm.Greys)
png = args.out / "mnist-samples.png"
plt.savefig(png, bbox_inches="tight")
print("30 random training digits ->", png)

# %% 5. Upload the data to the default datastore
ds = ws.get_default_datastore()
print(ds.datastore_type, ds.account_name, ds.container_name)
ds.upload(src_dir=str(data_folder), target_path="mnist", overwrite=True, show_progress=True)

# %% 6. Train locally (the tutorial: "one or two minutes", accuracy 0.9202)
limit = args.train_limit or X_train.shape[0]
clf = LogisticRegression()
clf.fit(X_train[:limit], y_train[:limit])
y_hat = clf.predict(X_test)
print("local accuracy:", np.average(y_hat == y_test))

# %% 7. The training script lives in ./sklearn-mnist (train.py + utils.py)
script_folder = HERE / "sklearn-mnist"
print(sorted(p.name for p in script_folder.iterdir() if p.suffix == ".py"))

# %% 8. An estimator: the source directory, script params (the datastore mounted on the node) and the target
script_params = {"--data-folder": ds.as_mount(), "--regularization": 0.8}
if args.train_limit:
    script_params["--train-limit"] = args.train_limit
est = Estimator(source_directory=str(script_folder), script_params=script_params, compute_target=compute_target,
                entry_script="train.py", conda_packages=["scikit-learn"])

# %% 9. Submit: returns at once
run = exp.submit(config=est)
print(run)

# %% 10. Jupyter widget: status, metrics and the log's tail, refreshed until the run ends (text outside Jupyter)
RunDetails(run).show()

# %% 11. Monitor: stream the log until the run ends (the pool scales up from zero first)
run.wait_for_completion(show_output=True)

# %% 12. Results
print(run.get_metrics())

# %% 13. Register the model
print(run.get_file_names())
model = run.register_model(model_name="sklearn_mnist", model_path="outputs/sklearn_mnist_model.pkl")
print(model.name, model.id, model.version, sep="\t")

# %% 14. Clean up: an idle pool scales to zero by itself; deleting it is optional
if args.delete_compute:
    print(compute_target.delete())
else:
    print(f"compute target {compute_name} kept: it scales to zero when idle (--delete-compute removes it)")
sys.stdout.flush()
