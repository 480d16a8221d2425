"""In-memory stand-ins for the cluster's services, for fast tests without servers (the unit tier).

* :class:`MemoryObjectStore`: one bucket in a dict (the :class:`~cluster.objectstore.Storage` protocol);
* :class:`MemoryBroker`: the pools' queues as lists (the :class:`~cluster.broker.Broker` protocol), with
  :meth:`MemoryBroker.deliver` to play a node taking the next message;
* :class:`MemoryProvider`: a node provider for the controller that starts nothing;
* Redis is ``fakeredis`` (with Lua, so the atomic scripts run unchanged);
* :func:`memory_workspace` wires the three into a :class:`~cluster.workspace.Workspace`.

The integration tier keeps the real servers; these fakes are for the repository (``RunState``), the controller's
tick, the sweep driver and other code whose logic, not its wire protocol, is under test.

>>> ws = memory_workspace()
>>> ws.enqueue("run-1", "cpu"); ws.broker.queued_run_ids("cpu")
{'run-1'}
"""

from __future__ import annotations

import builtins
import fnmatch
import hashlib
import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cluster import layout
from cluster.datastore import Datastore
from cluster.errors import NotFoundError, PayloadError
from cluster.objectstore import ObjectInfo, ObjectStore
from cluster.records import RunError, RunStatus
from cluster.settings import Settings
from cluster.workspace import Workspace

if TYPE_CHECKING:
    from cluster.autoscale import PoolSpec

__all__ = ["MemoryBroker", "MemoryObjectStore", "MemoryProvider", "fake_redis", "fake_settings", "memory_workspace",
           "play_next_run"]


class MemoryObjectStore(ObjectStore):
    """One bucket held in memory. It is an :class:`ObjectStore` (so a workspace's typed ``store`` accepts it) but
    talks to no server: every method is overridden, and ``client`` is None."""

    def __init__(self, bucket: str = "cluster") -> None:  # no super().__init__: no S3 client
        self.bucket = bucket
        self.client = None  # type: ignore[assignment]  # no S3 behind it: only the Storage methods work
        self.objects: dict[str, tuple[bytes, str]] = {}  # key -> (data, content type)
        self._lock = threading.Lock()

    def ensure_bucket(self) -> bool:
        return False

    def ping(self) -> None:
        return None

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        with self._lock:
            self.objects[key] = (bytes(data), content_type)

    def put_many(self, items: Iterable[tuple[str, bytes, str]]) -> None:
        for key, data, ctype in items:
            self.put_bytes(key, data, content_type=ctype)

    def put_file(self, key: str, path: Path, *, sha256: str | None = None) -> None:
        self.put_bytes(key, Path(path).read_bytes())

    def put_stream(self, key: str, fh: BinaryIO, size: int) -> None:
        self.put_bytes(key, fh.read(size))

    def get_bytes(self, key: str) -> bytes:
        with self._lock:
            try:
                return self.objects[key][0]
            except KeyError:
                raise NotFoundError(f"read {key}: {self.bucket}/{key} does not exist (NoSuchKey)") from None

    def get_json(self, key: str) -> Any:
        try:
            return json.loads(self.get_bytes(key))
        except ValueError as e:
            raise PayloadError(f"{self.bucket}/{key} is not valid JSON: {e}") from e

    def get_file(self, key: str, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.get_bytes(key))

    def stat(self, key: str) -> ObjectInfo | None:
        with self._lock:
            if key not in self.objects:
                return None
            data = self.objects[key][0]
        digest = hashlib.sha256(data).hexdigest()
        return ObjectInfo(key=key, size=len(data), etag=hashlib.md5(data).hexdigest(), sha256=digest)

    def list(self, prefix: str = "", *, recursive: bool = True) -> builtins.list[ObjectInfo]:
        with self._lock:
            keys = sorted(k for k in self.objects if k.startswith(prefix))
        if not recursive:
            keys = [k for k in keys if "/" not in k[len(prefix):]]
        return [info for k in keys if (info := self.stat(k)) is not None]

    def has_prefix(self, prefix: str) -> bool:
        with self._lock:
            return any(k.startswith(prefix) for k in self.objects)

    def list_dirs(self, prefix: str) -> builtins.list[str]:
        with self._lock:
            rests = [k[len(prefix):] for k in self.objects if k.startswith(prefix)]
        return sorted({r.split("/", 1)[0] for r in rests if "/" in r})

    def delete(self, key: str) -> None:
        with self._lock:
            self.objects.pop(key, None)

    def copy(self, source: str, key: str) -> None:
        data = self.get_bytes(source)
        with self._lock:
            self.objects[key] = (data, self.objects[source][1])

    def keys(self, pattern: str = "*") -> builtins.list[str]:
        """The stored keys matching a glob pattern (for assertions)."""
        with self._lock:
            return sorted(k for k in self.objects if fnmatch.fnmatchcase(k, pattern))


class MemoryBroker:
    """The pools' queues in memory: ``enqueue`` appends, :meth:`deliver` moves the oldest message of a pool to
    the delivered-but-unacknowledged set (what a node does on receipt), :meth:`ack` removes it."""

    def __init__(self) -> None:
        self.queues: dict[str, list[str]] = {}
        self.unacked: set[str] = set()
        self.sent: list[tuple[str, str]] = []  # every (run id, pool) ever enqueued, in order
        self._lock = threading.Lock()

    def enqueue(self, run_id: str, pool: str) -> None:
        with self._lock:
            self.queues.setdefault(pool, []).append(run_id)
            self.sent.append((run_id, pool))

    def queued_run_ids(self, pool: str) -> set[str]:
        with self._lock:
            return set(self.queues.get(pool, ()))

    def unacked_run_ids(self) -> set[str]:
        with self._lock:
            return set(self.unacked)

    def deliver(self, pool: str) -> str | None:
        """Take the oldest message of ``pool`` as a node would (None if the queue is empty)."""
        with self._lock:
            queue = self.queues.get(pool)
            if not queue:
                return None
            run_id = queue.pop(0)
            self.unacked.add(run_id)
            return run_id

    def ack(self, run_id: str) -> None:
        with self._lock:
            self.unacked.discard(run_id)

    def drop(self, pool: str) -> list[str]:
        """Lose every waiting message of a pool (a broker that lost its data); returns them."""
        with self._lock:
            return self.queues.pop(pool, [])


class MemoryProvider:
    """A node provider that starts nothing: it remembers the node names it "started" (the
    :class:`~cluster.providers.base.Provider` protocol); a test plays the nodes through Redis heartbeats."""

    name = "memory"

    def __init__(self) -> None:
        self.nodes: dict[str, list[str]] = {}  # pool -> node names, in start order
        self.stopped: list[tuple[str, bool]] = []  # (node, force), in order
        self._count = 0

    def start_nodes(self, pool: PoolSpec, count: int) -> list[str]:
        names = []
        for _ in range(count):
            self._count += 1
            names.append(f"{pool.name}-m{self._count}")
        self.nodes.setdefault(pool.name, []).extend(names)
        return names

    def stop_node(self, pool: PoolSpec, node: str, *, force: bool = False) -> None:
        if node in self.nodes.get(pool.name, []):
            self.nodes[pool.name].remove(node)
        self.stopped.append((node, force))

    def list_nodes(self, pool: PoolSpec) -> list[str]:
        return sorted(self.nodes.get(pool.name, []))


def play_next_run(ws: Workspace, pool: str, *, node: str = "memory-node", outcome: str = "Completed",
                  metrics: dict[str, list[float]] | None = None, log_lines: Iterable[str] = ()) -> str | None:
    """Do what a node does with the next message of ``pool``, without a script: claim the run, walk it through
    Preparing, Running and Finalizing to ``outcome`` (fenced writes), store its metrics and log, acknowledge.
    Returns the run id (None: nothing queued, or the claim was refused)."""
    broker = ws.broker
    if not isinstance(broker, MemoryBroker):
        raise TypeError("play_next_run needs a workspace on a MemoryBroker (memory_workspace())")
    run_id = broker.deliver(pool)
    if run_id is None:
        return None
    try:
        claim = ws.runs.claim(run_id, node, 60_000)
        if claim.outcome != "ok" or claim.record is None:
            return None
        record = claim.record.with_status(RunStatus.PREPARING, attempt=claim.attempt, node=node)
        ws.runs.write(record, claim.token)
        record = record.with_status(RunStatus.RUNNING)
        ws.runs.write(record, claim.token)
        events = [{"name": name, "kind": "scalar", "value": value, "t": float(i)}
                  for name, values in (metrics or {}).items() for i, value in enumerate(values)]
        folder = record.prefix + layout.attempt_dir(claim.attempt)  # the attempt's own folder, committed below
        ws.store.put_json(folder + layout.RUN_METRICS, {"events": events})
        ws.store.put_bytes(folder + layout.RUN_DRIVER_LOG, "".join(f"{line}\n" for line in log_lines).encode())
        final = RunStatus(outcome)
        if final is RunStatus.COMPLETED:
            record = record.with_status(RunStatus.FINALIZING)
        error = RunError(kind="user", message="exit code 1") if final is RunStatus.FAILED else None
        ws.runs.write(record.with_status(final, error=error, committed=claim.attempt), claim.token)
        return run_id
    finally:
        broker.ack(run_id)


def fake_settings(**overrides: Any) -> Settings:
    """Settings naming no reachable server (nothing connects: the fakes stand in)."""
    values: dict[str, Any] = {"redis_url": "redis://fake:6379/0", "s3_endpoint": "fake:9000",
                              "s3_access_key": "fake", "s3_secret_key": "fake-secret"}
    return Settings(**{**values, **overrides})


def fake_redis() -> Any:
    """A fakeredis client decoding responses like the cluster's own client (Lua scripts run: fakeredis[lua])."""
    import fakeredis

    return fakeredis.FakeRedis(decode_responses=True)


def memory_workspace(settings: Settings | None = None, *, redis: Any = None, store: MemoryObjectStore | None = None,
                     broker: MemoryBroker | None = None) -> Workspace:
    """A workspace on in-memory services: ``ws.store`` (cluster bucket), ``ws.redis``, ``ws.broker`` and the
    default datastore's bucket are fakes shared by everything that is given this workspace."""
    ws = Workspace(settings or fake_settings(), broker=broker or MemoryBroker())
    ws.__dict__["store"] = store or MemoryObjectStore(ws.settings.cluster_bucket)
    ws.__dict__["redis"] = redis if redis is not None else fake_redis()
    data = MemoryObjectStore(ws.settings.data_bucket)
    ws.__dict__["datastores"] = {layout.DEFAULT_DATASTORE: Datastore(layout.DEFAULT_DATASTORE, data)}
    return ws
