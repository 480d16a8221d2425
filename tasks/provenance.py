"""What a run ran with, recorded by its node: the packages of its Python environment (``pip freeze``'s lines),
stored as ``<run prefix>environment.json`` and shown in ``run.get_details()['properties']``.

The list is read from the installed distributions' metadata (``importlib.metadata``), not by running the
environment's interpreter: a run's packages are user code, and nothing of it runs on the node outside the sandbox.
A virtualenv built with ``--system-site-packages`` sees its own packages first, then the node's.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from cluster import layout

if TYPE_CHECKING:
    from tasks.node import Node

_CACHE: dict[str, tuple[str, list[str]]] = {}  # python path -> (version, freeze lines): environments never change
_LOCK = threading.Lock()


def frozen(python: str) -> tuple[str, list[str]]:
    """(Python version, ``name==version`` lines sorted by name) of the interpreter ``python`` runs with."""
    with _LOCK:
        if python in _CACHE:
            return _CACHE[python]
    exe = Path(python)
    own = sorted(exe.parent.parent.glob("lib/python*/site-packages"))
    version = own[0].parent.name.removeprefix("python") if own else f"{sys.version_info[0]}.{sys.version_info[1]}"
    paths = [str(p) for p in own] + [p for p in sys.path if p and Path(p).is_dir()]
    seen: dict[str, str] = {}
    for folder in paths:
        for name, installed in _installed(folder):
            seen.setdefault(name, f"{name}=={installed}")  # the first on the path wins, as for imports
    lines = [seen[key] for key in sorted(seen)]
    with _LOCK:
        _CACHE[python] = (version, lines)
    return version, lines


_META_DIR = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+?)\.(?:dist|egg)-info$")


def _canonical(name: str) -> str:
    """PEP 503's normalized project name (``scikit_learn`` -> ``scikit-learn``): a valid requirement either way."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed(folder: str) -> list[tuple[str, str]]:
    """(name, version) of the distributions installed in ``folder``. Read from the ``<name>-<version>.dist-info``
    folder names, as the wheel spec writes them: the first run on a node waited half a second while every METADATA
    file was parsed. A folder whose name carries no version (an old egg-info) is read the slow way."""
    out: list[tuple[str, str]] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return out
    for entry in entries:
        if not entry.name.endswith(("dist-info", "egg-info")):
            continue
        match = _META_DIR.match(entry.name)
        if match:
            out.append((_canonical(match["name"]), match["version"]))
            continue
        try:
            dist = metadata.Distribution.at(entry.path)
            name = dist.metadata["Name"] if dist.metadata else None
        except (OSError, ValueError):
            continue
        if name and dist.version:
            out.append((_canonical(name), dist.version))
    return out


def record_environment(node: Node, run_prefix: str, python: str, holds: Callable[[], None]) -> None:
    """Store the run's environment (run off the critical path, in the node's background pool). Fenced like every
    write of an attempt: ``holds()`` raises once the attempt lost the run's lease, and then nothing is written."""
    version, lines = frozen(python)
    holds()
    node.store.put_json(run_prefix + layout.RUN_ENVIRONMENT, {"python": version, "packages": lines,
                                                              "recorded": time.time()})
