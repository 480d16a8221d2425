# The README's two commands: `make demo` (the tutorial on the embedded cluster) and `make test`.
# Both install the project first (once per change of pyproject.toml).
PYTHON ?= python3
STAMP := .setup.stamp
# MNIST: imported from a folder when there is one beside the checkout (as in CI), else downloaded (verified)
MNIST_DIR ?= $(wildcard $(CURDIR)/../shared/data/mnist)
export MNIST_DIR

.PHONY: setup demo test lint bench down

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --disable-pip-version-check -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)    ## the whole tutorial on the embedded cluster (MNIST_DIR=... imports instead of downloading)
	$(PYTHON) -m cluster.cli up
	$(PYTHON) examples/sklearn-mnist/tutorial.py $(ARGS)

test: $(STAMP)    ## every tier: unit, integration (real Redis + S3 server), e2e (CLI and node processes), multihost (root: netns)
	$(PYTHON) -m pytest $(ARGS)

lint: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

bench: $(STAMP)   ## the benchmark suite (ARGS=--quick: under 3 minutes); writes bench/results/<timestamp>.json
	$(PYTHON) bench/suite.py $(ARGS)

down:             ## stop the embedded cluster started by `make demo` (data is kept)
	$(PYTHON) -m cluster.cli down
