"""The dashboard's pure parts, without servers: the access check (driven as a plain ASGI app), the SSE
cursor, the summary rows and the runs table's filter and sort."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cluster.records import RunError, RunRecord, RunStatus
from cluster.ui.auth import COOKIE, SecurityHeaders, TokenAuth, derive
from cluster.ui.index import make_row, scalar_metrics
from cluster.ui.stream import parse_cursor, sse
from cluster.ui.views import _matches, _sort_key

TOKEN = "t0ken-for-tests-0123456789"


async def _ok_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"ok"})


def call(path: str, *, method: str = "GET", query: str = "", headers: dict[str, str] | None = None,
         app: Any = None) -> tuple[int, dict[str, str], bytes]:
    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(), "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    coro = (app or TokenAuth(_ok_app, TOKEN))(scope, receive, send)
    # in a thread of its own: a session-wide Playwright (tests/ui) keeps an event loop running in this one
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()
    start = sent[0]
    hdrs = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], hdrs, b"".join(m.get("body", b"") for m in sent[1:])


def test_no_token_is_401_for_pages_and_json_for_the_api() -> None:
    status, headers, body = call("/runs/x")
    assert status == 401 and headers["content-type"].startswith("text/html") and b"sign in" in body
    status, headers, body = call("/api/runs")
    assert status == 401 and headers["content-type"] == "application/json" and b"unauthorized" in body
    assert call("/api/runs", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert call("/api/runs", headers={"Cookie": f"{COOKIE}={TOKEN}"})[0] == 401  # the raw token is not a session


def test_token_url_redirects_without_it_and_sets_the_session_cookie() -> None:
    status, headers, _ = call("/experiments/e", query=f"status=Failed&token={TOKEN}")
    assert status == 303 and headers["location"] == "/experiments/e?status=Failed"
    assert headers["set-cookie"].startswith(f"{COOKIE}={derive(TOKEN, 'session')};")
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    assert call("/", query="token=nope")[0] == 401


def test_bearer_and_cookie_pass_and_posts_with_the_cookie_need_the_csrf_token() -> None:
    cookie = {"Cookie": f"other=1; {COOKIE}={derive(TOKEN, 'session')}"}
    assert call("/api/runs", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert call("/api/runs", headers=cookie)[0] == 200
    assert call("/api/runs/x/cancel", method="POST", headers=cookie)[0] == 403
    csrf = {**cookie, "X-CSRF-Token": derive(TOKEN, "csrf"), "Host": "127.0.0.1:8780"}
    assert call("/api/runs/x/cancel", method="POST", headers=csrf)[0] == 200
    assert call("/api/runs/x/cancel", method="POST", headers={**csrf, "Origin": "http://127.0.0.1:8780"})[0] == 200
    assert call("/api/runs/x/cancel", method="POST", headers={**csrf, "Origin": "http://evil.test"})[0] == 403
    assert call("/api/runs/x/cancel", method="POST", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_security_headers_do_not_override_a_response_policy() -> None:
    _status, headers, _ = call("/", app=SecurityHeaders(_ok_app))
    assert "default-src 'self'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"

    async def sandboxed(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-security-policy", b"sandbox")]})
        await send({"type": "http.response.body", "body": b""})

    assert call("/", app=SecurityHeaders(sandboxed))[1]["content-security-policy"] == "sandbox"


def test_an_empty_token_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenAuth(_ok_app, "")


@pytest.mark.parametrize(("value", "expected"), [
    (None, ("0-0", "0-0")), ("", ("0-0", "0-0")), ("1700-3|1701-0", ("1700-3", "1701-0")),
    ("1700-3", ("1700-3", "0-0")), ("archive-12|5-1", ("archive-12", "5-1")), ("garbage|x-y", ("0-0", "0-0")),
    ("archive-x", ("0-0", "0-0")), ("$|+", ("0-0", "0-0")),
])
def test_sse_cursor(value: str | None, expected: tuple[str, str]) -> None:
    assert parse_cursor(value) == expected


def test_sse_event_format() -> None:
    assert sse("log", {"line": "a\nb"}, "1-0|2-0") == 'event: log\nid: 1-0|2-0\ndata: {"line": "a\\nb"}\n\n'


def test_summary_row_of_a_failed_run() -> None:
    rec = RunRecord(run_id="e_1_a", experiment="e", status=RunStatus.QUEUED, prefix="p/", tags={"k": "v"})
    rec = rec.with_status(RunStatus.QUEUED, at=100.0).with_status(RunStatus.PREPARING, at=102.0)
    rec = rec.with_status(RunStatus.RUNNING, at=102.0)
    rec = rec.with_status(RunStatus.FAILED, at=110.5, error=RunError(kind="user", message="exit code 3"))
    row = make_row(rec, {"loss": [0.9, 0.5], "acc": 0.7, "table": {"a": 1}, "name": "x", "rows": [{"a": 1}]})
    assert row["final"] and row["kind"] == "run" and row["error"] == "exit code 3"
    assert (row["submitted"], row["started"], row["ended"], row["duration"]) == (100.0, 102.0, 110.5, 8.5)
    assert row["metrics"] == {"loss": 0.5, "acc": 0.7, "name": "x"}  # series: last value; rows left out
    assert scalar_metrics({"s": ["a", {"x": 1}]}) == {"s": "a"}


def test_filter_and_sort_keys() -> None:
    rows = [{"run_id": "a", "status": "Completed", "tags": {"team": "x"}, "metrics": {"acc": 0.5}},
            {"run_id": "b", "status": "Failed", "tags": {"team": "y"}, "metrics": {"acc": "nan"}},
            {"run_id": "c", "status": "Canceled", "tags": {}, "metrics": {}}]
    assert [r["run_id"] for r in rows if _matches(r, "failed,canceled", None)] == ["b", "c"]
    assert [r["run_id"] for r in rows if _matches(r, None, "team")] == ["a", "b"]
    assert [r["run_id"] for r in rows if _matches(r, None, "team=y")] == ["b"]
    key = _sort_key("metric:acc")
    assert key(rows[2]) is None and key(rows[0]) < key(rows[1])  # numbers before strings, missing: no key
