"""Small helpers shared by the test tiers."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest


def wait_until(predicate: Callable[[], Any], timeout: float = 60.0, what: str = "condition",
               interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def unique(prefix: str) -> str:
    """A name no other test (or earlier run) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class EventCollector:
    """Where test scripts report what they did, over HTTP on loopback (a sandboxed run cannot write outside its
    run directory, but keeps the host's network): ``POST /<kind>/<run_id>/<pid>`` records an event,
    ``GET /count/<kind>`` answers how many of that kind were recorded. ``lines()`` gives them as
    ``"<kind> <run_id> <pid>"``, in arrival order."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        events: list[str] = []
        lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:
                pass

            def _reply(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    events.append(" ".join(self.path.strip("/").split("/")))
                self._reply(b"ok")

            def do_GET(self) -> None:
                kind = self.path.rsplit("/", 1)[-1]
                with lock:
                    n = sum(1 for e in events if e.split(" ", 1)[0] == kind)
                self._reply(str(n).encode())

        self._events, self._lock = events, lock
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def lines(self, kind: str | None = None) -> list[str]:
        with self._lock:
            return [e for e in self._events if kind is None or e.split(" ", 1)[0] == kind]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
