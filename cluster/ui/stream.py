"""A run's live page feed as server-sent events: log lines, metric events and status changes.

One blocking read per open stream: a single ``XREAD BLOCK`` over the run's log stream and its metrics
stream (asyncio Redis client, no thread held while waiting). The SSE ``id`` of each event is
``<last log entry>|<last metric entry>``, so a browser that reconnects (it sends ``Last-Event-ID``) resumes
exactly after what it saw: no line lost, none repeated. Once the live stream is gone (expired, or Redis
wiped) and the run is final, the archived ``logs/driver.log`` is sent instead, with ids ``archive-<n>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import redis.asyncio as aioredis

from cluster import layout, logstream
from cluster.records import RunStatus

log = logging.getLogger("cluster.ui.stream")

BLOCK_MS = 10_000  # a keep-alive comment at least this often
RETRY_MS = 2_000  # how long a browser waits before it reconnects (with Last-Event-ID)
FINAL = {s.value for s in RunStatus if s.is_final}


def parse_cursor(value: str | None) -> tuple[str, str]:
    """``"<log id>|<metric id>"`` (either part may be missing) -> the two positions to read after."""
    log_id, _, metric_id = (value or "").partition("|")
    return _valid(log_id), _valid(metric_id)


def _valid(entry: str) -> str:
    entry = entry.strip()
    if entry.startswith("archive-") and entry[8:].isdigit():
        return entry
    head, _, tail = entry.partition("-")
    return entry if head.isdigit() and (not tail or tail.isdigit()) else "0-0"


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [f"data: {part}" for part in json.dumps(data).split("\n")]
    return "\n".join(lines) + "\n\n"


async def follow(r: aioredis.Redis, run_id: str, *, after: str, metrics_after: str,
                 read_archive: Callable[[], list[str]], stored_status: Callable[[], str],
                 disconnected: Callable[[], Any], block_ms: int = BLOCK_MS) -> AsyncIterator[str]:
    """SSE text for one run, from the given positions, until its log ends and it is final."""
    log_key, met_key, run_key = layout.rk_run_log(run_id), layout.rk_run_metrics(run_id), layout.rk_run(run_id)
    last_log, last_met = after, metrics_after

    async def current() -> str:  # Redis first; the record in the object store if Redis no longer has the run
        return str(await r.hget(run_key, "status") or await asyncio.to_thread(stored_status))

    status = await current()
    yield sse("status", {"status": status})
    if last_log.startswith("archive-"):  # resuming inside the archive
        async for chunk in _archive(read_archive, int(last_log[8:]) + 1, last_met):
            yield chunk
        yield sse("end", {"status": status})
        return
    log_done = False
    quiet_final = 0
    while True:
        if await disconnected():
            return
        keys = {met_key: last_met} if log_done else {log_key: last_log, met_key: last_met}
        got: Any = await r.xread(keys, count=500, block=block_ms)  # type: ignore[arg-type]
        out: list[str] = []
        for key, entries in got or []:
            for entry_id, fields in entries:
                if key == log_key:
                    last_log = entry_id
                    if fields.get("eof") == "1":
                        log_done = True
                        block_ms = min(block_ms, 250)  # the final status follows the eof within moments
                        continue
                    out.append(sse("log", {"id": entry_id, "line": fields.get("l", ""), "s": fields.get("s", "o")},
                                   f"{last_log}|{last_met}"))
                else:
                    last_met = entry_id
                    try:
                        event = json.loads(fields.get("e", "{}"))
                    except ValueError:
                        continue
                    out.append(sse("metric", event, f"{last_log}|{last_met}"))
        if out:
            yield "".join(out)
        now = await current()
        if now != status:
            status = now
            yield sse("status", {"status": status}, f"{last_log}|{last_met}")
        final = status in FINAL
        if not got:
            yield ": keep-alive\n\n"
        if not final:
            quiet_final = 0
            continue
        if log_done:
            yield sse("end", {"status": status}, f"{last_log}|{last_met}")
            return
        if not await r.exists(log_key):
            if last_log == "0-0":
                async for chunk in _archive(read_archive, 0, last_met):
                    yield chunk
            yield sse("end", {"status": status}, f"{last_log}|{last_met}")
            return
        if not got:  # final, the stream is there, no eof: the attempt that wrote it died (see logstream.follow)
            quiet_final += 1
            if quiet_final > 1:
                yield sse("end", {"status": status}, f"{last_log}|{last_met}")
                return
            block_ms = 200


async def guarded(feed: AsyncIterator[str], run_id: str) -> AsyncIterator[str]:
    """End the response cleanly if Redis fails mid-stream: the browser reconnects and resumes where it was."""
    yield f"retry: {RETRY_MS}\n\n"
    try:
        async for chunk in feed:
            yield chunk
    except (aioredis.RedisError, OSError) as e:
        log.warning("live feed of run %s ended early: %s", run_id, e)


async def _archive(read_archive: Callable[[], list[str]], start: int, last_met: str) -> AsyncIterator[str]:
    lines = await asyncio.to_thread(read_archive)
    batch: list[str] = []
    for n in range(start, len(lines)):
        batch.append(sse("log", {"id": f"archive-{n}", "line": lines[n], "s": "o"}, f"archive-{n}|{last_met}"))
        if len(batch) >= 500:
            yield "".join(batch)
            batch = []
    if batch:
        yield "".join(batch)


def log_page(r: Any, store: Any, run_id: str, prefix: str, after: str, final: bool,
             limit: int = 1000) -> dict[str, Any]:
    """Non-blocking: the log lines after ``after`` (at most ``limit``), the id to continue from, and whether
    the log is complete."""
    key = layout.rk_run_log(run_id)
    after = _valid(after)
    if not after.startswith("archive-"):
        entries: Any = r.xrange(key, min=f"({after}" if after != "0-0" else "-", count=limit)
        if entries or r.exists(key) or not final:
            lines = []
            complete = False
            nxt = after
            for entry_id, fields in entries:
                nxt = entry_id
                if fields.get("eof") == "1":
                    complete = True
                    break
                lines.append({"id": entry_id, "line": fields.get("l", "")})
            if not entries and final:
                complete = True
            return {"lines": lines, "next": nxt, "complete": complete}
        start = 0 if after == "0-0" else None
    else:
        start = int(after[8:]) + 1
    archived = logstream.archived(store, prefix)
    start = start or 0
    chunk = archived[start:start + limit]
    lines = [{"id": f"archive-{start + n}", "line": line} for n, line in enumerate(chunk)]
    nxt = lines[-1]["id"] if lines else after
    return {"lines": lines, "next": nxt, "complete": start + len(chunk) >= len(archived)}
