"""The dashboard as a service of the embedded cluster: started by `cluster up`, stopped by `cluster down`
(it is one more process in state.json), checked by `cluster status` with a real, authenticated request.

Its token and port live in ``.cluster/config.json`` (mode 0600) as ``ui_token``, ``ui_port`` and ``ui_url``;
both are reused by the next `up`.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cluster import processes
from cluster.settings import CONFIG_FILE

NAME = "ui"
HOST = "127.0.0.1"
DEFAULT_PORT = 8780
START_TIMEOUT = 60.0
UI_KEYS = ("ui_token", "ui_port", "ui_url")


def login_url(config: dict[str, Any]) -> str:
    """The address that signs a browser in (it carries the token once; the app swaps it for a cookie)."""
    return f"{config['ui_url']}?token={config['ui_token']}"


def check(url: str, token: str, timeout: float = 3.0) -> tuple[bool, str]:
    """A real request: ``GET /api/health`` with the token."""
    req = urllib.request.Request(url.rstrip("/") + "/api/health", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 200, f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        return False, f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return False, f"not answering: {getattr(e, 'reason', e)}"


def ensure(state_dir: Path, echo: Callable[[str], None] = print) -> bool:
    """Start the dashboard unless ours is running; print its sign-in URL. True if it was started."""
    state_dir = Path(state_dir).resolve()
    path = state_dir / CONFIG_FILE
    config = json.loads(path.read_text())
    running = processes.running_process(state_dir, NAME)
    token = config.get("ui_token") or secrets.token_urlsafe(24)
    port = config.get("ui_port")
    if running is None and (not port or not processes.port_free(int(port))):
        port = DEFAULT_PORT if processes.port_free(DEFAULT_PORT) else processes.free_port()
    url = f"http://{HOST}:{port}/"
    wanted = {"ui_token": token, "ui_port": int(port), "ui_url": url}
    if any(config.get(k) != v for k, v in wanted.items()):
        processes.write_private(path, json.dumps({**config, **wanted}, indent=2))
    started = False
    if running is None:
        processes.forget_dead(state_dir, NAME)  # so the record names only the live dashboard
        argv = [sys.executable, "-m", "cluster.cli", "ui", "--config", str(path), "--host", HOST, "--port", str(port)]
        proc = processes.spawn(NAME, argv, state_dir)
        processes.add_process(state_dir, proc)
        started = True
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            ok, detail = check(url, token)
            if ok:
                break
            if not proc.alive or time.monotonic() > deadline:
                echo(f"warning: the dashboard did not start ({detail}); see {proc.log}")
                return started
            time.sleep(0.2)
    echo(f"  dashboard    {url}?token={token}")
    return started


def status_detail(state_dir: Path) -> tuple[bool, str, str]:
    """(healthy, endpoint, detail) of the embedded cluster's dashboard, from a real request."""
    try:
        config = json.loads((Path(state_dir) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False, "?", "no ui_url in config.json"
    if not config.get("ui_url") or not config.get("ui_token"):
        return False, "?", "no ui_url in config.json"
    ok, detail = check(config["ui_url"], config["ui_token"])
    return ok, config["ui_url"], ("answering, token accepted" if ok else detail)
