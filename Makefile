# The two commands of the README, plus helpers.
PYTHON ?= python3

.PHONY: setup demo test lint bench

setup:            ## install the project and its dev tools
	$(PYTHON) -m pip install -e ".[dev]"

demo:             ## the whole tutorial on the embedded cluster (MNIST_DIR=... to import instead of download)
	$(PYTHON) -m cluster.cli up
	$(PYTHON) examples/sklearn-mnist/tutorial.py $(ARGS)

test:             ## every test tier: unit, integration (real Redis + S3), e2e (CLI + worker processes)
	$(PYTHON) -m pytest

lint:
	$(PYTHON) -m ruff check .
