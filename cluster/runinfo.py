"""What is known about a run besides its record: tags and properties set after submit, the Git state of its source
directory, the packages its environment held, and the filters ``experiment.get_runs`` / ``cluster runs list`` apply.

Tags and properties set after submit live in objects of their own beside run.json (``tags.json``,
``properties.json``), so a client never races the node's fenced record writes. Tags given at submit stay in the
record; ``get_tags`` merges both (later values win, ``None`` removes). Properties are add-only as in Azure: a key
keeps its first value.
"""

from __future__ import annotations

import operator
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cluster import layout, validation
from cluster.errors import ConflictError, NotFoundError, UsageError

if TYPE_CHECKING:
    from cluster.objectstore import ObjectStore
    from cluster.records import RunRecord

GIT_TIMEOUT = 10.0


def _read(store: ObjectStore, key: str) -> dict[str, Any]:
    try:
        data = store.get_json(key)
    except NotFoundError:
        return {}
    return dict(data) if isinstance(data, dict) else {}


# ---- tags ---------------------------------------------------------------------------------------

def get_tags(store: ObjectStore, prefix: str, record: RunRecord) -> dict[str, str]:
    later = _read(store, prefix + layout.RUN_TAGS)
    merged = {**record.tags, **later}
    return {k: str(v) for k, v in merged.items() if v is not None}


def set_tags(store: ObjectStore, prefix: str, tags: Mapping[str, Any]) -> None:
    """Add or change tags (a value of None removes the tag)."""
    if not isinstance(tags, Mapping):
        raise UsageError(f"tags must be a dict of name -> value, got {type(tags).__name__}",
                         hint="e.g. run.set_tags({'team': 'vision'})")
    clean: dict[str, str | None] = {}
    for k, v in tags.items():
        validation.text("tag name", k)
        clean[k] = None if v is None else validation.string_map("tags", {k: v}, keys="tag name")[k]
    current = _read(store, prefix + layout.RUN_TAGS)
    store.put_json(prefix + layout.RUN_TAGS, {**current, **clean})


# ---- properties ---------------------------------------------------------------------------------

def get_properties(store: ObjectStore, prefix: str) -> dict[str, str]:
    return {k: str(v) for k, v in _read(store, prefix + layout.RUN_PROPERTIES).items()}


def add_properties(store: ObjectStore, prefix: str, properties: Mapping[str, Any]) -> None:
    """Add properties; as in Azure a property cannot be changed once set (ConflictError)."""
    new = validation.string_map("properties", properties, keys="property name")
    current = _read(store, prefix + layout.RUN_PROPERTIES)
    clash = sorted(k for k, v in new.items() if k in current and str(current[k]) != v)
    if clash:
        raise ConflictError(f"properties are immutable: {', '.join(clash)} already set",
                            hint="use tags for values that change: run.set_tags({...})")
    store.put_json(prefix + layout.RUN_PROPERTIES, {**current, **new})


def details_properties(store: ObjectStore, prefix: str) -> dict[str, str]:
    """``get_details()['properties']``: the run's properties plus what the node recorded about its environment."""
    props = get_properties(store, prefix)
    env = _read(store, prefix + layout.RUN_ENVIRONMENT)
    if env:
        props["environment.python"] = str(env.get("python", ""))
        props["environment.pip_freeze"] = "\n".join(env.get("packages", []))
    return props


# ---- Git state of a source directory ------------------------------------------------------------

def git_properties(source_directory: Path) -> dict[str, str]:
    """``git.commit``, ``git.dirty``, ``git.branch``, ``git.repository`` of the repository holding
    ``source_directory``; empty when it is in none (or git is not installed)."""
    src = source_directory.resolve()
    if not any((d / ".git").exists() for d in (src, *src.parents)):
        return {}  # not in a repository: no git process started

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(src), *args], capture_output=True, text=True,
                                 timeout=GIT_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {}
    status = git("status", "--porcelain", "--untracked-files=normal", "--", ".")
    props = {"git.commit": commit, "git.dirty": str(bool(status)).lower() if status is not None else "unknown"}
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        props["git.branch"] = branch
    remote = git("config", "--get", "remote.origin.url")
    if remote:
        props["git.repository"] = re.sub(r"//[^/@]+@", "//", remote)  # never a credential in a URL
    return props


# ---- filters (experiment.get_runs, `cluster runs list`) -------------------------------------------

RUN_TYPES = {"azureml.scriptrun": "run", "run": "run", "script": "run", "hyperdrive": "sweep", "sweep": "sweep"}


def tag_filter(tags: Any) -> Callable[[Mapping[str, str]], bool]:
    """Azure's ``tags=``: a name (the tag is set), a list of names, or a dict (``None`` value: just set)."""
    if tags is None:
        return lambda _t: True
    if isinstance(tags, str):
        tags = {tags: None}
    elif isinstance(tags, Iterable) and not isinstance(tags, Mapping):
        tags = dict.fromkeys(tags)
    if not isinstance(tags, Mapping):
        raise UsageError(f"tags must be a name, a list of names or a dict, got {type(tags).__name__}")
    want = {validation.text("tag name", k): (None if v is None else str(v)) for k, v in tags.items()}
    return lambda have: all(k in have and (v is None or have[k] == v) for k, v in want.items())


def run_type(record: RunRecord) -> str:
    from cluster.records import is_sweep

    return "sweep" if is_sweep(record) else "run"


def check_type(value: str | None) -> str | None:
    if value is None:
        return None
    if value not in RUN_TYPES:
        raise UsageError(f"unknown run type {value!r}", hint=f"one of {', '.join(sorted(RUN_TYPES))}")
    return RUN_TYPES[value]


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, "!=": operator.ne, "==": operator.eq, ">": operator.gt, "<": operator.lt,
    "=": operator.eq}
_WHERE = re.compile(r"^\s*(?P<name>.+?)\s*(?P<op>>=|<=|!=|==|>|<|=)\s*(?P<value>.+?)\s*$")


def parse_where(expr: str) -> Callable[[Mapping[str, Any]], bool]:
    """``'accuracy>0.9'``, ``'loss <= 0.2'``, ``'model == svm'``: a test on a run's metrics. A metric logged
    several times compares by its last value; a run without the metric never matches."""
    m = _WHERE.match(expr or "")
    if not m:
        raise UsageError(f"cannot read --where {expr!r}", hint="write METRIC OP VALUE, e.g. 'accuracy>0.9'")
    name, op, raw = m["name"], _OPS[m["op"]], m["value"]
    if re.search(r"[<>=!]", raw):
        raise UsageError(f"cannot read --where {expr!r}: one comparison only",
                         hint="write METRIC OP VALUE, e.g. 'accuracy>0.9'; repeat --where for several")
    try:
        wanted: Any = float(raw)
    except ValueError:
        wanted = raw.strip("'\"")

    def test(metrics: Mapping[str, Any]) -> bool:
        if name not in metrics:
            return False
        value = last_value(metrics[name])
        if isinstance(wanted, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                return False
            return bool(op(float(value), wanted))
        return bool(op(str(value), wanted))

    return test


def last_value(value: Any) -> Any:
    return value[-1] if isinstance(value, list) and value else value
