"""Pure parts of the performance work: CPU sets per node, thread-count variables, snapshot fingerprints."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cluster.providers.local import allocate_cpus, node_cpus
from cluster.snapshot import fingerprint
from tasks.node import THREAD_VARS, thread_env


def test_nodes_get_disjoint_cpus_while_the_host_has_them() -> None:
    first = allocate_cpus([0, 1, 2, 3], [], 1)
    second = allocate_cpus([0, 1, 2, 3], [first], 1)
    third = allocate_cpus([0, 1, 2, 3], [first, second], 2)
    assert first == (0,) and second == (1,) and third == (2, 3)


def test_beyond_the_host_the_load_is_spread_not_piled_on_cpu0() -> None:
    used = [(0,), (1,)]
    assert allocate_cpus([0, 1], used, 1) == (0,)
    assert allocate_cpus([0, 1], [*used, (0,)], 1) == (1,)
    assert allocate_cpus([0, 1], [], 4) == (0, 1)  # a size bigger than the host gets the whole host


def test_node_cpus_reads_the_flag() -> None:
    assert node_cpus(["python", "-m", "cluster.cli", "worker", "--cpus", "2,3"]) == (2, 3)
    assert node_cpus(["python", "worker"]) == ()


def test_thread_variables_follow_the_size_unless_the_run_sets_them() -> None:
    env = thread_env(1, {})
    assert set(env) == set(THREAD_VARS) and set(env.values()) == {"1"}
    env = thread_env(2, {"OMP_NUM_THREADS": "8"})
    assert "OMP_NUM_THREADS" not in env and env["OPENBLAS_NUM_THREADS"] == "2"


def test_thread_variables_without_a_size_use_the_node_cpus() -> None:
    expected = str(len(os.sched_getaffinity(0)))
    assert thread_env(None, {})["MKL_NUM_THREADS"] == expected


def test_fingerprint_changes_with_content_and_not_otherwise(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text("print(1)\n")
    a = fingerprint(tmp_path)
    assert a is not None and fingerprint(tmp_path) == a
    (tmp_path / "train.py").write_text("print(22)\n")
    assert fingerprint(tmp_path) != a
    b = fingerprint(tmp_path)
    (tmp_path / "utils.py").write_text("x = 1\n")
    assert fingerprint(tmp_path) != b


@pytest.mark.parametrize("missing", ["nope"])
def test_fingerprint_of_a_missing_folder_is_none(tmp_path: Path, missing: str) -> None:
    assert fingerprint(tmp_path / missing) is None
