"""Live run logs: a Redis stream per run while it runs, the complete log archived in the object store.

The node appends every stdout/stderr line (and its own system lines) to ``cluster:run:<id>:log`` and ends
the stream with an ``eof`` entry. Followers read with XREAD from the last id they saw, so they can start
at the beginning or resume where they were, in order and without gaps. Once the stream is gone (expired,
or Redis wiped) the archived ``logs/driver.log`` is read instead.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import redis

from cluster import layout, luascript
from cluster.errors import NotFoundError
from cluster.objectstore import ObjectStore

STREAM_TTL_SECONDS = layout.finished_ttl_seconds()  # the log is archived before: as long as the run's hash
#: the live stream keeps about this many lines (XADD MAXLEN ~); the archived driver.log keeps every line
STREAM_MAX_LINES = 100_000
FLUSH_LINES = 500
FLUSH_SECONDS = 0.2


# Fenced append (lua/fenced_xadd.lua): the lines are added only while the attempt's lease token is the run's.
_FENCED_XADD = luascript.read("cluster", "fenced_xadd.lua")


class LogWriter:
    """Node side: batch lines into the run's stream and into the local driver log file.

    With a lease ``token`` every append to the stream is fenced (one Lua call checks the lease and adds the
    batch): once another attempt holds the run, nothing more reaches the stream; the writer disables itself.
    """

    def __init__(self, r: redis.Redis, run_id: str, path: Path, *, token: str = "") -> None:
        self.r = r
        self.token = token
        self.key = layout.rk_run_log(run_id)
        self._lease_key = layout.rk_run_lease(run_id)
        self._append = r.register_script(_FENCED_XADD)
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] = open(path, "a", encoding="utf-8")  # noqa: SIM115 -- closed in close()
        self._pending: list[dict[str, str]] = []
        self._last_flush = time.monotonic()
        self.enabled = True  # turned off when the attempt loses its lease (fencing)
        self.done = False  # closed: the stream ended (or was fenced off)
        self.file_error: OSError | None = None  # the local file could not be written (a full disk)
        self.lines_not_in_file = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # a quiet script's last line must not wait for the next one: flush on a timer too
        self._flusher = threading.Thread(target=self._flush_loop, name="log-flush", daemon=True)
        self._flusher.start()

    def _flush_loop(self) -> None:
        while not self._closed.wait(FLUSH_SECONDS):
            if self._pending:
                try:
                    self.flush()
                except Exception:  # Redis blip: lines stay pending and go with the next flush
                    continue

    def _to_file(self, text: str) -> None:
        """The local copy (archived at the end). A full disk must not stop the run's log: the stream goes on,
        and the archive says how many lines it misses."""
        if self.file_error is not None:
            self.lines_not_in_file += 1
            return
        try:
            self._file.write(text + "\n")
        except OSError as e:
            self.file_error = e
            self.lines_not_in_file += 1

    def line(self, stream: str, text: str) -> None:
        with self._lock:
            self._to_file(text)
            # o: stdout, e: stderr, x: the node's own lines (a reader may colour them apart)
            self._pending.append({"s": {"stdout": "o", "stderr": "e"}.get(stream, stream[:1]), "l": text})
            due = len(self._pending) >= FLUSH_LINES or time.monotonic() - self._last_flush > FLUSH_SECONDS
        if due:
            self.flush()

    def system(self, text: str) -> None:
        self.line("x", f"[node] {text}")

    def flush(self) -> None:
        with self._lock:
            if not self._file.closed and self.file_error is None:
                try:
                    self._file.flush()
                except OSError as e:
                    self.file_error = e
            pending, self._pending = self._pending, []
            self._last_flush = time.monotonic()
            if pending and self.enabled:
                args: list[str | int] = [self.token, STREAM_MAX_LINES]
                for entry in pending:
                    args += [entry["s"], entry["l"]]
                try:
                    added = self._append(keys=[self.key, self._lease_key], args=args)
                except Exception:
                    self._pending = pending + self._pending  # keep order; retried on the next flush
                    raise
                if added == -1:
                    self.enabled = False  # fenced: another attempt holds the run

    def close(self) -> None:
        """Flush, close the file, and end the stream (``eof``, fenced). Safe to call again: after a Redis error
        it retries what did not happen; once closed it does nothing."""
        if self.done:
            return
        self._closed.set()
        self._flusher.join()
        self.flush()
        with contextlib.suppress(OSError):  # a full disk: file_error already says so
            self._file.close()  # closing twice is fine: close() is retried when Redis does not answer
        if self.enabled and self._append(keys=[self.key, self._lease_key], args=[self.token, STREAM_MAX_LINES,
                                                                                 "eof", ""]) != -1:
            self.r.expire(self.key, STREAM_TTL_SECONDS)
        else:
            self.enabled = False
        self.done = True


def follow(r: redis.Redis, store: ObjectStore, run_id: str, prefix: str | Callable[[], str], *, after: str = "0-0",
           is_final: Callable[[], bool], poll_ms: int = 1000,
           deadline: float | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(entry_id, line)`` from ``after`` on until the run's log ends (or ``time.monotonic()`` passes
    ``deadline``, even while the run prints nothing or has not started).

    Falls back to the archived log when the live stream does not exist and the run is final; ``prefix`` is the
    folder of the run's files (the committed attempt's), or a function returning it, asked only then.
    """
    key = layout.rk_run_log(run_id)
    last = after
    quiet_final = 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            return
        got: Any = r.xread({key: last}, count=1000, block=poll_ms if not quiet_final else 100)
        if got:
            for entry_id, fields in got[0][1]:
                last = entry_id
                if fields.get("eof") == "1":
                    return
                yield entry_id, fields.get("l", "")
            continue
        if not r.exists(key) and is_final():
            if last == "0-0":  # never saw the live stream: read the archive
                folder = prefix() if callable(prefix) else prefix
                yield from ((f"archive-{i}", line) for i, line in enumerate(archived(store, folder)))
            return
        if is_final():
            # Final, the stream is there, but no eof. The node writes eof before the final status, so one more
            # read catches it if it is on its way; if not, it never comes (the attempt that wrote these lines
            # died, and the run was then canceled or failed without it): end here rather than wait forever.
            quiet_final += 1
            if quiet_final > 1:
                return


def archived(store: ObjectStore, prefix: str) -> list[str]:
    try:
        return store.get_bytes(prefix + layout.RUN_DRIVER_LOG).decode("utf-8", "replace").splitlines()
    except NotFoundError:
        return []


def lines_so_far(r: redis.Redis, store: ObjectStore, run_id: str, prefix: str) -> list[str]:
    """The whole log if it is archived (the run ended), else what the live stream holds so far."""
    lines = archived(store, prefix)
    if not lines:
        entries: Any = r.xrange(layout.rk_run_log(run_id))
        lines = [f.get("l", "") for _i, f in entries if "l" in f]
    return lines
