"""Checkpoints that survive the loss of a node: ``./outputs/checkpoints`` of a running script, uploaded as it
changes, restored into the next attempt's run directory.

* While the script runs, :class:`CheckpointSync` uploads the files of ``./outputs/checkpoints`` that changed since
  the last pass (size, mtime or inode differ: a file replaced with ``os.replace`` counts as changed) every
  ``checkpoint_seconds`` (a pool setting, 5 s by default), once more when the script ended (also when the node was
  asked to stop and stopped it), and removes from the store what the script deleted.
* Every write is fenced like the node's other writes: the attempt must still hold the run's lease (checked before
  each upload); once it lost it, nothing more is written.
* The files live at the run level, ``<run prefix>checkpoints/`` (``layout.checkpoint_prefix``), shared by the
  run's attempts; ``<run prefix>checkpoints.json`` says which attempt uploaded them and when (written after the
  files of a pass, so it never names a file that is not there yet).
* :func:`restore` copies them into a new attempt's ``./outputs/checkpoints`` before the script starts; the script
  learns it through ``CLUSTER_RUN_RESUMED_FROM_ATTEMPT`` (``run.resumed_from_attempt``).

The run directory is hostile input: the folder is walked with :class:`tasks.rundir.OutputWalk` (no link followed,
no FIFO opened, the pool's output caps apply), below an ``outputs`` directory opened without following a link
(:func:`tasks.rundir.real_dir`).
A script should write each checkpoint file atomically (write a temporary file, then ``os.replace``): a pass uploads
the files it finds complete, one by one.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cluster import layout
from cluster.errors import NotFoundError
from tasks.rundir import OutputCaps, OutputWalk, real_dir

if TYPE_CHECKING:
    from tasks.node import Node

CHECKPOINT_DIR = "checkpoints"  # below ./outputs
ENV_RESUMED_FROM = "CLUSTER_RUN_RESUMED_FROM_ATTEMPT"  # CLUSTER_RUN_*: a run cannot set it itself
DEFAULT_SECONDS = 5.0


def restore(node: Node, run_prefix: str, run_dir: Path, log: Callable[[str], None]) -> int | None:
    """Copy the run's last uploaded checkpoint into ``run_dir/outputs/checkpoints``; the attempt that uploaded it,
    or None when there is none (a first attempt, or one whose predecessors never checkpointed)."""
    try:
        manifest = node.store.get_json(layout.checkpoint_manifest_key(run_prefix))
    except NotFoundError:
        return None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return None
    base = layout.checkpoint_prefix(run_prefix)
    target = (run_dir / layout.OUTPUTS_DIR / CHECKPOINT_DIR).resolve()
    count = 0
    for rel in files:
        dest = (target / rel).resolve()
        if not isinstance(rel, str) or not dest.is_relative_to(target) or dest == target:
            log(f"checkpoint file {rel!r} ignored: not a path inside ./outputs/checkpoints")
            continue
        try:
            node.store.get_file(base + rel, dest)
        except NotFoundError:
            log(f"checkpoint file {rel!r} is listed but missing: not restored")
            continue
        count += 1
    attempt = manifest.get("attempt")
    log(f"restored {count} checkpoint file(s) uploaded by attempt {attempt} into ./outputs/checkpoints")
    return attempt if isinstance(attempt, int) else None


def script_env(resumed_from: int | None) -> dict[str, str]:
    """What the script learns: which attempt's checkpoint it starts with (nothing on a fresh start)."""
    return {ENV_RESUMED_FROM: str(resumed_from)} if resumed_from is not None else {}


class CheckpointSync:
    """Upload ``./outputs/checkpoints`` while the script runs (a thread), and once more when it ends.

    ``holds()`` is the attempt's fence (it raises when the lease is lost); ``lost()`` says whether it was lost
    already (then nothing is written)."""

    def __init__(self, node: Node, run_prefix: str, run_dir: Path, attempt_no: int, *, holds: Callable[[], None],
                 lost: Callable[[], bool], interval: float, caps: OutputCaps, log: Callable[[str], None]) -> None:
        self.node, self.run_prefix, self.run_dir, self.attempt_no = node, run_prefix, run_dir, attempt_no
        self._holds, self._lost, self.interval, self.caps, self._log = holds, lost, interval, caps, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"checkpoints-{run_prefix}", daemon=True)
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[int, int, int]] = {}  # key -> (size, mtime_ns, inode) as last uploaded
        self._failing = False
        self.passes = 0  # passes that uploaded or removed something (for tests and the log)

    def __enter__(self) -> CheckpointSync:
        if self.interval > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.sync_quietly()  # the script ended (or was stopped): what it saved last

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sync_quietly()

    def sync_quietly(self) -> None:
        """One pass; a lost lease or a storage error is logged once and the next pass tries again."""
        try:
            self.sync()
            self._failing = False
        except Exception as e:  # never kills the run: the script's own result does not depend on this
            if not self._failing and not self._lost():
                self._log(f"checkpoint upload failed ({getattr(e, 'message', None) or e}); retrying next pass")
            self._failing = True

    def sync(self) -> int:
        """Upload what changed, remove what was deleted, then the manifest. Returns files uploaded."""
        with self._lock:
            if self._lost():
                return 0
            base = layout.checkpoint_prefix(self.run_prefix)
            uploaded, present = 0, set()
            with real_dir(self.run_dir / layout.OUTPUTS_DIR) as outputs:
                if outputs is None:
                    return 0
                walk = OutputWalk(outputs, CHECKPOINT_DIR, self.caps, self._log)
                for key, fh, size in walk:
                    rel = key[len(CHECKPOINT_DIR) + 1:]
                    st = os.fstat(fh.fileno())
                    stamp = (size, st.st_mtime_ns, st.st_ino)
                    present.add(rel)
                    if self._seen.get(rel) == stamp:
                        continue
                    self._holds()  # fenced: only while this attempt holds the run
                    self.node.store.put_stream(base + rel, fh, size)
                    self._seen[rel] = stamp
                    uploaded += 1
            gone = [rel for rel in self._seen if rel not in present]
            if not uploaded and not gone:
                return 0
            for rel in gone:
                self._holds()
                self.node.store.delete(base + rel)
                del self._seen[rel]
            self._holds()
            self.node.store.put_json(layout.checkpoint_manifest_key(self.run_prefix), {
                "attempt": self.attempt_no, "uploaded": time.time(),
                "files": {rel: {"size": s[0]} for rel, s in sorted(self._seen.items())}})
            self.passes += 1
            self._log(f"checkpoint: uploaded {uploaded} file(s)" + (f", removed {len(gone)}" if gone else ""))
            return uploaded
