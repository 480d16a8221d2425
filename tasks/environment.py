"""Per-run Python environments on a node: cached virtualenvs built with pip.

A run asks for extra packages with an ``EnvSpec``. An empty spec runs on the node's own Python.
Otherwise ``resolve_environment`` builds (once per node and spec) a virtualenv at
``<cache_dir>/<digest>/`` with ``--system-site-packages``, so everything the node already has
(numpy, scikit-learn, this project) is reused and pip installs only what is missing.

Layout of the cache::

    <cache_dir>/<digest>.lock          flock'ed while the environment is checked or built
    <cache_dir>/<digest>/              the virtualenv
    <cache_dir>/<digest>/.cluster-env.json   marker, written last and atomically: the env is complete
    <cache_dir>/<digest>.stamps.json  stat of every file of the finished env (mode, size, mtime, ctime, inode)

An environment is reused only when its files still match their stamps (a write, chmod, utime or replacement
changes ctime or inode); otherwise it is removed, rebuilt and the event logged. Sandboxed runs see it
read-only anyway; the stamps catch tampering by a run on an unisolated node.

conda: nodes build pip virtualenvs only. ``conda_packages`` are installed with pip, their names
mapped where conda and PyPI differ (``CONDA_TO_PIP``), and a line in the run log says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from cluster.errors import UsageError
from cluster.schema import Record, record
from cluster.validation import Packages
from tasks.process import run_supervised, scrubbed_env
from tasks.sandbox import Sandbox, prepare_dirs

__all__ = [
    "CONDA_TO_PIP",
    "EnvSpec",
    "EnvironmentBuildError",
    "conda_to_pip",
    "resolve_environment",
]

MARKER = ".cluster-env.json"
ERROR_TAIL_LINES = 25
BUILD_TIMEOUT = 1800.0  # seconds for venv creation plus pip install

#: conda package names whose PyPI name differs. Names not listed are passed to pip unchanged.
CONDA_TO_PIP: dict[str, str] = {
    "pytorch": "torch",
    "pytorch-cpu": "torch",
    "py-xgboost": "xgboost",
    "py-xgboost-cpu": "xgboost",
    "py-lightgbm": "lightgbm",
    "py-opencv": "opencv-python",
    "opencv": "opencv-python",
    "matplotlib-base": "matplotlib",
    "msgpack-python": "msgpack",
    "python-graphviz": "graphviz",
    "pytables": "tables",
    "tensorflow-gpu": "tensorflow",
}

#: conda packages that make no sense to pip: the interpreter and pip itself come from the node.
_CONDA_SKIP = frozenset({"python", "pip", "setuptools", "wheel"})

_CONDA_SPEC_RE = re.compile(r"^(?:[^:\s]+::)?([A-Za-z0-9_.\-]+)\s*(.*)$")


class EnvironmentBuildError(UsageError):
    """A run's environment could not be built; ``output_tail`` holds the last lines of the build."""

    def __init__(self, message: str, *, hint: str | None = None, output_tail: tuple[str, ...] = ()) -> None:
        self.output_tail = output_tail
        if output_tail:
            message = message + "\n  last output:\n" + "\n".join(f"    {line}" for line in output_tail)
        super().__init__(message, hint=hint)


@record
class EnvSpec(Record):
    """Packages a run needs beyond the node's Python: pip requirement strings and conda package specs."""

    __what__ = "environment"

    pip_packages: Packages = ()
    conda_packages: Packages = ()

    @property
    def is_empty(self) -> bool:
        """True when the run needs nothing beyond the node's own Python."""
        return not self.pip_packages and not self.conda_packages

    def digest(self) -> str:
        """sha256 of a canonical form: order and duplicates of packages do not matter."""
        canonical = json.dumps(
            {"conda": sorted(set(self.conda_packages)), "pip": sorted(set(self.pip_packages))},
            sort_keys=True, separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def conda_to_pip(spec: str) -> str | None:
    """Translate one conda package spec to a pip requirement; None for packages pip must skip.

    ``channel::name`` loses the channel; names are mapped with ``CONDA_TO_PIP``; conda's
    ``name=1.2`` (meaning 1.2.*) becomes ``name==1.2.*``; ``name 1.2`` becomes ``name==1.2``;
    other operators (``>=``, ``==``, ``<``...) pass through.
    """
    m = _CONDA_SPEC_RE.match(spec.strip())
    if not m:
        return spec.strip()
    name, version = m.group(1), m.group(2).strip()
    if name.lower() in _CONDA_SKIP:
        return None
    name = CONDA_TO_PIP.get(name.lower(), name)
    if not version:
        return name
    if version.startswith("=") and not version.startswith("=="):
        version = version[1:]
        return f"{name}=={version}" if version.endswith("*") else f"{name}=={version}.*"
    if version[0].isdigit():
        return f"{name}=={version}"
    return f"{name}{version}"


def _pip_requirements(spec: EnvSpec, log: Callable[[str], None]) -> list[str]:
    requirements = list(dict.fromkeys(spec.pip_packages))
    if spec.conda_packages:
        conda = shutil.which("conda") or shutil.which("mamba")
        names = list(spec.conda_packages)
        if conda:
            log(f"[env] conda found at {conda}, but this node builds pip virtualenvs: "
                f"installing conda_packages {names} with pip")
        else:
            log(f"[env] conda not found on this node: installing conda_packages {names} with pip")
        for conda_spec in spec.conda_packages:
            pip_spec = conda_to_pip(conda_spec)
            if pip_spec is None:
                log(f"[env] conda package {conda_spec!r} skipped: the node's Python and pip are used")
            elif pip_spec != conda_spec:
                log(f"[env] conda package {conda_spec!r} -> pip {pip_spec!r}")
            if pip_spec is not None and pip_spec not in requirements:
                requirements.append(pip_spec)
    return requirements


@contextlib.contextmanager
def _locked(path: Path, log: Callable[[str], None], short: str) -> Iterator[None]:
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"[env] waiting for another build of environment {short} on this node")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _venv_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def _read_marker(env_dir: Path) -> dict[str, object] | None:
    try:
        data = json.loads((env_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(env_dir: Path, base_python: str) -> bool:
    marker = _read_marker(env_dir)
    return (
        marker is not None
        and marker.get("base_python") == os.path.realpath(base_python)
        and _venv_python(env_dir).exists()
    )


def _write_marker(env_dir: Path, spec: EnvSpec, base_python: str, requirements: list[str]) -> None:
    data = {
        "digest": spec.digest(),
        "pip_packages": list(spec.pip_packages),
        "conda_packages": list(spec.conda_packages),
        "requirements": requirements,
        "base_python": os.path.realpath(base_python),
        "created": time.time(),
    }
    tmp = env_dir / f"{MARKER}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # whatever a package build left there (a symlink, say): we never write through it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, env_dir / MARKER)


@dataclass(frozen=True)
class _Jail:
    """Where build steps run: a user's packages (setup.py, build backends) are as hostile as train.py, so
    with a sandbox they run in it -- network on, only the environment directory and a private tmp writable."""

    box: Sandbox | None
    env_dir: Path
    tmp: Path

    def launch(self, argv: list[str]) -> tuple[list[str], dict[str, str], int | None, int | None, bool]:
        env = scrubbed_env(os.environ, extra={})
        if self.box is None or self.box.level == "none":
            return argv, env, None, None, False
        env |= {"HOME": str(self.tmp), "TMPDIR": str(self.tmp)} if self.box.level == "uid" else \
            {"HOME": "/tmp", "TMPDIR": "/tmp"}
        box = replace(self.box, policy=replace(self.box.policy, network="host"))
        # local wheel folders the operator points pip at (PIP_FIND_LINKS) are visible, read-only
        links = [Path(p) for p in env.get("PIP_FIND_LINKS", "").split() if p.startswith("/") and Path(p).is_dir()]
        launch = box.wrap(argv, python=argv[0], run_dir=self.env_dir, tmp_dir=self.tmp, cwd=self.env_dir,
                          readonly=links)
        return launch.argv, env, launch.user, launch.group, launch.wrapped


def _run_step(argv: list[str], cwd: Path, prefix: str, log: Callable[[str], None],
              tail: deque[str], deadline: float, jail: _Jail | None = None) -> bool:
    """Run one build step, logging each line as ``[prefix] line``; True when it succeeded."""

    def on_line(_stream: str, line: str) -> None:
        tail.append(line)
        log(f"[{prefix}] {line}")

    if jail is None:
        cmd, env, user, group, wrapped = argv, scrubbed_env(os.environ, extra={}), None, None, False
    else:
        cmd, env, user, group, wrapped = jail.launch(argv)
    result = run_supervised(cmd, cwd=cwd, env=env, on_line=on_line, user=user, group=group, wrapped=wrapped,
                            timeout=max(1.0, deadline - time.monotonic()), grace=5.0)
    if not result.ok:
        tail.append(f"({prefix} ended: {result.describe()})")
    return result.ok


def _build(env_dir: Path, spec: EnvSpec, base_python: str, log: Callable[[str], None],
           timeout: float, box: Sandbox | None = None) -> None:
    short = spec.digest()[:12]
    requirements = _pip_requirements(spec, log)
    log(f"[env] building environment {short} in {env_dir}: {' '.join(requirements)}")
    deadline = time.monotonic() + timeout
    tail: deque[str] = deque(maxlen=ERROR_TAIL_LINES)
    started = time.monotonic()
    tmp = env_dir.with_name(env_dir.name + ".build-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    prepare_dirs(box, env_dir, tmp)  # empty, owned by the run uid while packages are built
    jail = _Jail(box, env_dir, tmp)
    try:
        _build_steps(env_dir, spec, base_python, log, tail, deadline, requirements, jail)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        _reown(env_dir)  # the finished (or failed) environment belongs to the node again
    log(f"[env] environment {short} ready in {time.monotonic() - started:.1f}s")


def _reown(root: Path) -> None:
    """Give the tree back to the node's uid (no link followed) and take write access away from others."""
    uid, gid = os.geteuid(), os.getegid()
    for base, dirs, files in os.walk(root):
        for name in (".", *dirs, *files):
            path = os.path.join(base, name)
            with contextlib.suppress(OSError):
                os.chown(path, uid, gid, follow_symlinks=False)
                st = os.lstat(path)
                if not stat.S_ISLNK(st.st_mode):
                    os.chmod(path, stat.S_IMODE(st.st_mode) & ~0o022)


def _build_steps(env_dir: Path, spec: EnvSpec, base_python: str, log: Callable[[str], None], tail: deque[str],
                 deadline: float, requirements: list[str], jail: _Jail) -> None:
    short = spec.digest()[:12]
    # Without its own pip: the node's pip is importable through --system-site-packages and
    # installs into the venv (sys.prefix), which saves the seconds ensurepip takes.
    if not _run_step([base_python, "-m", "venv", "--system-site-packages", "--without-pip", str(env_dir)],
                     env_dir, "venv", log, tail, deadline, jail):
        raise EnvironmentBuildError(
            f"could not create a virtualenv for environment {short} with {base_python}",
            hint="check that the node's Python has the venv module and the cache directory is writable",
            output_tail=tuple(tail),
        )
    python = str(_venv_python(env_dir))
    _link_node_packages(env_dir, base_python, log)
    if not _run_step([python, "-m", "pip", "--version"], env_dir, "pip", log, tail, deadline, jail):
        tail.clear()
        if not _run_step([python, "-m", "ensurepip", "--default-pip"], env_dir, "venv", log, tail,
                         deadline, jail):
            raise EnvironmentBuildError(
                f"environment {short} has no pip and ensurepip failed",
                hint="install pip for the node's Python (python -m ensurepip)",
                output_tail=tuple(tail),
            )
    tail.clear()
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *requirements]
    if not _run_step(pip, env_dir, "pip", log, tail, deadline, jail):
        raise EnvironmentBuildError(
            f"pip could not install the run's packages ({' '.join(requirements)})",
            hint="fix the package names/versions in the run's environment (pip_packages/conda_packages): "
                 f"each must be installable with `pip install` for the node's Python ({base_python})",
            output_tail=tuple(tail),
        )
    _write_marker(env_dir, spec, base_python, requirements)


_SITE_DIRS = "import json, site, sys; print(json.dumps([*site.getsitepackages(), site.getusersitepackages()]))"


def _link_node_packages(env_dir: Path, base_python: str, log: Callable[[str], None]) -> None:
    """Make the node's own site-packages visible in the env, after the env's own packages.

    ``--system-site-packages`` only reaches the *base* interpreter's packages; when the node itself runs
    in a virtualenv (the usual install), its packages -- numpy, scikit-learn, this project -- live in that
    virtualenv. A .pth line calling ``site.addsitedir`` adds them (and processes their own .pth files,
    e.g. editable installs)."""
    import subprocess

    try:
        out = subprocess.run([base_python, "-c", _SITE_DIRS], capture_output=True, text=True, timeout=60,
                             check=True).stdout
        dirs = [d for d in json.loads(out) if Path(d).is_dir()]
    except (OSError, ValueError, subprocess.SubprocessError) as e:
        log(f"[env] could not list the node's site-packages ({e}); relying on --system-site-packages")
        return
    purelib = next(env_dir.glob("lib/python*/site-packages"), None)
    if purelib is None or not dirs:
        return
    lines = [f"import site; site.addsitedir({d!r})" for d in dirs]
    (purelib / "_cluster_node_packages.pth").write_text("\n".join(lines) + "\n")


def _stamps(root: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for base, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]  # bytecode a run's Python may write on a level-none node
        for name in files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = [st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    return out


def _write_stamps(env_dir: Path, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_stamps(env_dir)))
    os.replace(tmp, path)


def _stamps_ok(env_dir: Path, path: Path) -> bool:
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return bool(known == _stamps(env_dir))


def resolve_environment(
    spec: EnvSpec,
    cache_dir: Path,
    *,
    log: Callable[[str], None],
    base_python: str = sys.executable,
    timeout: float = BUILD_TIMEOUT,
    sandbox: Sandbox | None = None,
) -> str:
    """Return the Python executable a run with ``spec`` should use, building its env if needed.

    Every line of venv and pip output goes to ``log`` prefixed ``[venv]``/``[pip]``; the function's
    own notes are prefixed ``[env]``. A complete environment is reused without running anything.
    Builds of the same spec on one node are serialized by an flock on ``<cache_dir>/<digest>.lock``.

    Raises ``EnvironmentBuildError`` (a ``UsageError``) when the build fails; the half-built
    directory is removed and no marker is written. ``timeout`` bounds the whole build.
    """
    if spec.is_empty:
        return base_python
    cache_dir = Path(cache_dir).absolute()
    digest = spec.digest()
    short = digest[:12]
    env_dir = cache_dir / digest
    python = str(_venv_python(env_dir))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"cannot create the environment cache {cache_dir}: {e.strerror}",
                         hint="point the node's environment cache at a writable directory") from e
    with _locked(cache_dir / f"{digest}.lock", log, short):
        if _is_complete(env_dir, base_python):
            if _stamps_ok(env_dir, cache_dir / f"{digest}.stamps.json"):
                log(f"[env] reusing environment {short}")
                return python
            log(f"[env] environment {short} failed verification (its files changed since it was built): "
                "rebuilding it")
        if env_dir.exists():
            why = "built from another Python" if _read_marker(env_dir) else "incomplete"
            log(f"[env] removing {why} environment {short}")
            shutil.rmtree(env_dir)
        try:
            _build(env_dir, spec, base_python, log, timeout, sandbox)
            _write_stamps(env_dir, cache_dir / f"{digest}.stamps.json")
        except BaseException:
            shutil.rmtree(env_dir, ignore_errors=True)
            raise
    return python
