# The tutorial's train.py with the azureml imports swapped for this project's (and `import joblib`).
import argparse
import os

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression
from utils import load_data

from cluster import Run

parser = argparse.ArgumentParser()
parser.add_argument("--data-folder", type=str, dest="data_folder", help="data folder mounting point")
parser.add_argument("--regularization", type=float, dest="reg", default=0.01, help="regularization rate")
# optional: train on the first N images only (keeps test runs fast); the tutorial uses all 60,000
parser.add_argument("--train-limit", type=int, dest="train_limit", default=0, help=argparse.SUPPRESS)
args = parser.parse_args()

data_folder = os.path.join(args.data_folder, "mnist")
print("Data folder:", data_folder)

# load train and test set into numpy arrays
# note we scale the pixel intensity values to 0-1 (by dividing it with 255.0) so the model can converge faster.
X_train = load_data(os.path.join(data_folder, "train-images-idx3-ubyte.gz"), False) / 255.0
X_test = load_data(os.path.join(data_folder, "t10k-images-idx3-ubyte.gz"), False) / 255.0
y_train = load_data(os.path.join(data_folder, "train-labels-idx1-ubyte.gz"), True).reshape(-1)
y_test = load_data(os.path.join(data_folder, "t10k-labels-idx1-ubyte.gz"), True).reshape(-1)
if args.train_limit:
    X_train, y_train = X_train[: args.train_limit], y_train[: args.train_limit]
print(X_train.shape, y_train.shape, X_test.shape, y_test.shape, sep="\n")

# get hold of the current run
run = Run.get_context()

print("Train a logistic regression model with regularization rate of", args.reg)
clf = LogisticRegression(C=1.0 / args.reg, random_state=42, max_iter=100)
clf.fit(X_train, y_train)

print("Predict the test set")
y_hat = clf.predict(X_test)

# calculate accuracy on the prediction
acc = np.average(y_hat == y_test)
print("Accuracy is", acc)

run.log("regularization rate", float(args.reg))
run.log("accuracy", float(acc))

os.makedirs("outputs", exist_ok=True)
# note file saved in the outputs folder is automatically uploaded into experiment record
joblib.dump(value=clf, filename="outputs/sklearn_mnist_model.pkl")
