"""Train in epochs and save a checkpoint after each one; a retried attempt goes on from the last checkpoint.

Whatever the script saves in ``run.checkpoint_dir`` (``./outputs/checkpoints``) is uploaded by the node every few
seconds while it runs (a pool setting, 5 s by default). If the node is lost, the run's next attempt starts with the
last uploaded checkpoint back in that folder, and ``run.resumed_from_attempt`` says which attempt saved it.

    from cluster import ScriptRunConfig
    src = ScriptRunConfig(source_directory="examples/checkpoints", script="train_epochs.py",
                          arguments=["--epochs", 10], compute_target="cpucluster")

Runs anywhere (off a node too): scikit-learn's bundled digits, an SGD classifier trained one epoch at a time.
"""

from __future__ import annotations

import argparse
import os
import pickle
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.linear_model import SGDClassifier

from cluster import Run

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--epoch-seconds", type=float, default=0.0, help="pause after each epoch (a longer job)")
args = parser.parse_args()

run = Run.get_context()
state_file = run.checkpoint_dir / "state.pkl"  # ./outputs/checkpoints/state.pkl
epoch_file = run.checkpoint_dir / "epoch.txt"

X, y = load_digits(return_X_y=True)
X = X / 16.0
split = len(X) * 4 // 5
classes = np.unique(y)

start = 0
clf = SGDClassifier(loss="log_loss", random_state=0)
if state_file.exists():  # a retried attempt: the node restored the last checkpoint it uploaded
    with open(state_file, "rb") as fh:
        state = pickle.load(fh)
    clf, start = state["model"], state["epoch"]
    print(f"resuming after epoch {start} (checkpoint saved by attempt {run.resumed_from_attempt})", flush=True)
run.log("start_epoch", start)
run.log("resumed_from_attempt", run.resumed_from_attempt or 0)

rng = np.random.default_rng(0)
for epoch in range(start + 1, args.epochs + 1):
    order = rng.permutation(split)
    clf.partial_fit(X[order], y[order], classes=classes)
    accuracy = float(clf.score(X[split:], y[split:]))
    run.log("epoch", epoch)
    run.log("accuracy", accuracy)
    print(f"epoch {epoch}: accuracy {accuracy:.4f}", flush=True)
    # write atomically (a temporary file outside the folder, then rename): an upload never sees half a file
    tmp = run.checkpoint_dir.parent / "state.pkl.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump({"model": clf, "epoch": epoch}, fh)
    os.replace(tmp, state_file)
    tmp.write_text(str(epoch))
    os.replace(tmp, epoch_file)
    time.sleep(args.epoch_seconds)
