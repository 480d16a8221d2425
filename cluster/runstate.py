"""A run's state in both homes: the Redis hash (live, fenced) and run.json in the object store (the record).

Every change after submit goes through Redis first, atomically, and only a writer that succeeded there
writes ``run.json``. Node writes are *fenced*: they carry the lease token ``<node>/<attempt>`` and are
refused once another attempt holds the run, so a stale attempt (a node that came back, or a message
Redis delivered twice) can change nothing.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

import redis

from cluster import layout, luascript
from cluster.errors import BrokerFullError, NotFoundError, PayloadError
from cluster.objectstore import ObjectStore
from cluster.records import RunRecord, RunSpec, RunStatus

# One round trip per delivery: count it, take the lease, reset the live metrics of a retried attempt, and
# return the live record and the spec (kept in the hash since submit) so the node reads nothing else.
_CLAIM = luascript.read("cluster", "claim.lua")

_FENCED_WRITE = luascript.read("cluster", "fenced_write.lua")

#: a finished run's live state (hash, metrics stream) stays in Redis this long; then readers use the object
#: store, where everything is archived (Redis stays bounded however many runs finish)
FINISHED_TTL_MS = layout.finished_ttl_seconds() * 1000

_RELEASE = luascript.read("cluster", "release_lease.lua")

_RENEW = luascript.read("cluster", "renew_lease.lua")

_CANCEL_QUEUED = luascript.read("cluster", "cancel_queued.lua")

_REQUEUE = luascript.read("cluster", "requeue.lua")


def _json_bytes(obj: object) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False).encode()


rk_active = layout.rk_active  # (built in cluster/layout.py; the name other modules import from here)


@dataclass(frozen=True)
class Claim:
    outcome: str  # ok | final | held | missing
    token: str = ""
    record: RunRecord | None = None  # with outcome ok: the live record at claim time
    spec: RunSpec | None = None  # with outcome ok, when Redis has it (set at submit)

    @property
    def attempt(self) -> int:
        return int(self.token.rsplit("/", 1)[1]) if self.outcome == "ok" else 0


class RunState:
    """Reads and writes one cluster's run records (object store) and live run state (Redis)."""

    def __init__(self, store: ObjectStore, r: redis.Redis) -> None:
        self.store = store
        self.r = r
        self._claim = r.register_script(_CLAIM)
        self._write = r.register_script(_FENCED_WRITE)
        self._renew = r.register_script(_RENEW)
        self._cancel = r.register_script(_CANCEL_QUEUED)
        self._requeue = r.register_script(_REQUEUE)

    # -- create / read ----------------------------------------------------------------------------
    def create(self, spec: RunSpec, record: RunRecord) -> None:
        """Submit-time: spec, record and index entries in the object store first (the system of record), then Redis.

        The four objects are independent, so they are written concurrently; Redis is seeded only after all
        of them are stored."""
        self.store.put_many([
            (spec.prefix + layout.RUN_SPEC, _json_bytes(spec.to_dict()), "application/json"),
            (spec.prefix + layout.RUN_RECORD, _json_bytes(record.to_dict()), "application/json"),
            (layout.run_index_key(spec.run_id), spec.prefix.encode(), "text/plain"),
            (layout.live_index_key(spec.run_id), spec.prefix.encode(), "text/plain"),
        ])
        try:
            self.seed(record, spec)
        except redis.exceptions.OutOfMemoryError as e:
            raise BrokerFullError("the broker (Redis) is full: it refuses new runs (maxmemory reached)",
                                  hint="wait for queued runs to finish, or raise Redis' maxmemory; a finished run's "
                                  "live state expires by itself (its record stays in the object store)") from e

    def seed(self, record: RunRecord, spec: RunSpec | None = None) -> None:
        pipe = self.r.pipeline()
        # the spec goes with the record for the node's claim (one round trip); spec.json stays the record
        pipe.hset(layout.rk_run(record.run_id), mapping={
            "record": json.dumps(record.to_dict()), "status": record.status.value, "attempt": record.attempt,
            "prefix": record.prefix, "pool": record.pool,
        })
        if spec is not None:
            pipe.hset(layout.rk_run(record.run_id), "spec", json.dumps(spec.to_dict()))
        if record.status.is_final:
            pipe.pexpire(layout.rk_run(record.run_id), FINISHED_TTL_MS)
        else:
            pipe.sadd(rk_active(record.pool), record.run_id)
            pipe.lpush(layout.RK_CONTROLLER_WAKE, "1")  # the controller scales for it now, not next tick
            pipe.ltrim(layout.RK_CONTROLLER_WAKE, 0, 0)
        pipe.execute()

    def prefix(self, run_id: str) -> str:
        prefix = self.r.hget(layout.rk_run(run_id), "prefix")
        if prefix:
            return str(prefix)
        try:
            return self.store.get_bytes(layout.run_index_key(run_id)).decode().strip()
        except NotFoundError:
            raise NotFoundError(f"no run with id {run_id!r}",
                                hint="list runs with `cluster runs list` or experiment.get_runs()") from None

    def spec(self, run_id: str) -> RunSpec:
        return RunSpec.from_dict(self.store.get_json(self.prefix(run_id) + layout.RUN_SPEC))

    def record(self, run_id: str) -> RunRecord:
        raw = self.r.hget(layout.rk_run(run_id), "record")
        if raw:
            try:
                return RunRecord.from_dict(json.loads(raw))
            except ValueError as e:
                raise PayloadError(f"live record of {run_id} is not JSON: {e}") from e
        return self.stored_record(run_id)

    def stored_record(self, run_id: str) -> RunRecord:
        return RunRecord.from_dict(self.store.get_json(self.prefix(run_id) + layout.RUN_RECORD))

    def status(self, run_id: str) -> RunStatus:
        st = self.r.hget(layout.rk_run(run_id), "status")
        return RunStatus(str(st)) if st else self.stored_record(run_id).status

    # -- node side: claim, fenced writes, lease renewal -------------------------------------------
    def claim(self, run_id: str, node: str, lease_ms: int) -> Claim:
        """Take the run's lease for a new attempt (one Lua call); with outcome ok, also its record and spec."""
        keys = [layout.rk_run(run_id), layout.rk_run_lease(run_id), layout.rk_run_metrics(run_id)]
        reply = self._claim(keys=keys, args=[node, lease_ms])
        if reply[0] == "missing":  # Redis lost it (wiped?): re-seed from the object store, then try again
            stored = self.stored_record(run_id)
            if stored.status.is_final:
                return Claim("final", stored.status.value)
            self.r.hsetnx(keys[0], "status", stored.status.value)
            self.seed(stored)
            reply = self._claim(keys=keys, args=[node, lease_ms])
        outcome, token = str(reply[0]), str(reply[1])
        if outcome != "ok":
            return Claim(outcome, token)
        try:
            record = RunRecord.from_dict(json.loads(reply[2])) if reply[2] else self.stored_record(run_id)
            spec = RunSpec.from_dict(json.loads(reply[3])) if reply[3] else None
        except ValueError as e:
            raise PayloadError(f"live state of {run_id} is not valid JSON: {e}") from e
        return Claim(outcome, token, record, spec)

    def write(self, record: RunRecord, token: str, *, store: bool = True) -> bool:
        """Fenced update of the live record; on success also writes run.json (unless ``store`` is False: the
        caller then writes it, e.g. off the critical path). False: we lost the run."""
        final = record.status.is_final
        keys = [layout.rk_run(record.run_id), layout.rk_run_lease(record.run_id), rk_active(record.pool),
                layout.rk_run_metrics(record.run_id), layout.RK_CONTROLLER_WAKE, layout.RK_FINISHED]
        ok = self._write(keys=keys, args=[token, json.dumps(record.to_dict()), record.status.value,
                                          "1" if final else "0", record.run_id, FINISHED_TTL_MS])
        if ok and final:  # Redis made the transition: count it even if the record's upload below fails
            note_transition(self.r, record, outcome=record.status.value.lower())
            # (the script above expired the hash and metrics and marked the run finished; LogWriter.close the log)
        if ok and store:
            self.store_record(record)
        return bool(ok)

    def _finished(self, run_id: str) -> None:
        """Tell the controller the run is final (it drops it from the live index once run.json says so), and let
        its live keys expire (the node's final write sets the same TTL in its Lua; a run failed or canceled
        by the controller or a user gets it here). Best effort: an entry left in the index costs the next
        recovery one read of run.json."""
        with contextlib.suppress(redis.RedisError):
            pipe = self.r.pipeline(transaction=False)
            pipe.sadd(layout.RK_FINISHED, run_id)
            for key in (layout.rk_run(run_id), layout.rk_run_metrics(run_id), layout.rk_run_log(run_id)):
                pipe.pexpire(key, FINISHED_TTL_MS)
            pipe.execute()

    def finished_run_ids(self, count: int = 500) -> list[str]:
        ids: Any = self.r.srandmember(layout.RK_FINISHED, count)
        return [str(i) for i in ids or []]

    def forget_finished(self, run_ids: list[str]) -> None:
        if run_ids:
            self.r.srem(layout.RK_FINISHED, *run_ids)

    def live_record_is(self, record: RunRecord) -> bool:
        """Does Redis hold exactly this record (our own write arrived, though its reply did not)?"""
        raw = self.r.hget(layout.rk_run(record.run_id), "record")
        return raw is not None and raw == json.dumps(record.to_dict())

    def store_record(self, record: RunRecord) -> None:
        self.store.put_json(record.prefix + layout.RUN_RECORD, record.to_dict())

    def release(self, run_id: str, token: str) -> bool:
        """Give the lease back before anything was done with it (the run stays as it was, for another try)."""
        return bool(self.r.eval(_RELEASE, 1, layout.rk_run_lease(run_id), token))

    def holds(self, run_id: str, token: str) -> bool:
        return self.r.get(layout.rk_run_lease(run_id)) == token

    def renew(self, run_id: str, token: str, lease_ms: int) -> int:
        """-1: lease lost; 1: cancel requested; 0: carry on."""
        keys = [layout.rk_run(run_id), layout.rk_run_lease(run_id)]
        return int(self._renew(keys=keys, args=[token, lease_ms]))

    def requeue(self, record: RunRecord, *, expected_holder: str = "") -> bool:
        """Put a live run back (node lost) or fail it, unless another attempt holds it now."""
        keys = [layout.rk_run(record.run_id), layout.rk_run_lease(record.run_id), rk_active(record.pool)]
        ok = self._requeue(keys=keys, args=[expected_holder, json.dumps(record.to_dict()), record.status.value,
                                            "1" if record.status.is_final else "0", record.run_id])
        if ok:
            note_transition(self.r, record, outcome="node-lost")
            if record.status.is_final:
                self._finished(record.run_id)
            self.store.put_json(record.prefix + layout.RUN_RECORD, record.to_dict())
        return bool(ok)

    # -- cancel -----------------------------------------------------------------------------------
    def cancel(self, run_id: str) -> str:
        """'canceled' (was queued: it will never start), 'requested' (the node stops it), or a final status."""
        record = self.record(run_id)
        if record.status.is_final:  # nothing to cancel (the state machine keeps a finished run finished)
            return record.status.value
        canceled = record.with_status(RunStatus.CANCELED, error=None)
        keys = [layout.rk_run(run_id), layout.rk_run_lease(run_id), rk_active(record.pool)]
        outcome = str(self._cancel(keys=keys, args=[json.dumps(canceled.to_dict()), run_id]))
        if outcome == "missing":  # Redis lost the run: the object store's (non-final) record is seeded again
            self.seed(record)
            return self.cancel(run_id)
        if outcome == "canceled":
            note_transition(self.r, canceled, outcome="")  # never started: no attempt
            self._finished(run_id)
            self.store.put_json(record.prefix + layout.RUN_RECORD, canceled.to_dict())
        return outcome

    def cancel_requested(self, run_id: str) -> bool:
        return self.r.hget(layout.rk_run(run_id), "cancel") == "1"

    # -- listing ----------------------------------------------------------------------------------
    def list_run_ids(self, experiment: str) -> list[str]:
        return self.store.list_dirs(layout.experiment_runs_prefix(experiment))

    def list_all_run_ids(self, experiment: str) -> list[str]:
        """Top-level runs and sweep children (``children/<id>/`` under their parent)."""
        base = layout.experiment_runs_prefix(experiment)
        ids = []
        for info in self.store.list(base):
            parts = info.key[len(base):].split("/")  # <id>/run.json or <id>/children/<child>/.../run.json
            if (parts[-1] == layout.RUN_RECORD and len(parts) % 2 == 0
                    and all(parts[i] == "children" for i in range(1, len(parts) - 2, 2))):
                ids.append(parts[-2])
        return ids

    def list_experiments(self) -> list[str]:
        return self.store.list_dirs(layout.EXPERIMENTS)

    def list_live_run_ids(self) -> list[str]:
        """Runs that were not final when last seen (the live index): what recovery after a Redis wipe reads."""
        return [info.key[len(layout.LIVE_INDEX):] for info in self.store.list(layout.LIVE_INDEX)]

    def index_live(self, record: RunRecord) -> None:
        self.store.put_bytes(layout.live_index_key(record.run_id), record.prefix.encode(), content_type="text/plain")

    def unindex_live(self, run_id: str) -> None:
        """The run is final: recovery no longer needs to look at it."""
        self.store.delete(layout.live_index_key(run_id))


def note_transition(r: redis.Redis, record: RunRecord, *, outcome: str) -> None:
    """Tell the metrics (:mod:`cluster.telemetry`) that a run ended an attempt (``outcome``: completed,
    failed, canceled, node-lost; empty when no attempt ran) and/or reached a final status. Best effort:
    a lost event costs a count, never a run."""
    fields: dict[Any, Any] = {"run": record.run_id, "pool": record.pool, "status": record.status.value,
                              "outcome": outcome, "timestamps": json.dumps(record.timestamps)}
    with contextlib.suppress(redis.RedisError):
        r.xadd(layout.RK_RUN_EVENTS, fields, maxlen=layout.RUN_EVENTS_MAXLEN, approximate=True)
