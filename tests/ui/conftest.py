"""Fixtures for the dashboard: the dashboard that `cluster up` started for the session's embedded cluster
(real Redis, real S3 server, real controller), real node processes, an HTTP client with the token, and a
real browser (Debian's Chromium driven by Playwright).

A missing Chromium (or Playwright) skips the browser tests locally but fails them in CI (CI=true).
Screenshots go to ``artifacts/ui/`` (gitignored)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import skip_or_fail
from tests.integration.conftest import (  # noqa: F401 -- fixtures shared with the integration tier
    make_source,
    node,
    node_secrets,
    nodes,
    pool,
    ws,
)
from tests.ui.support import Dashboard

CHROMIUM = Path(os.environ.get("CLUSTER_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts" / "ui"


@pytest.fixture(scope="session")
def dashboard(cluster_dir: Path) -> Dashboard:
    """The dashboard `cluster up` started (its URL and token are in config.json)."""
    config = json.loads((cluster_dir / "config.json").read_text())
    assert config.get("ui_url") and config.get("ui_token"), "cluster up did not record the dashboard"
    return Dashboard(config["ui_url"], config["ui_token"])


@pytest.fixture(scope="session")
def api(dashboard: Dashboard) -> Iterator[httpx.Client]:
    """A script's view of the JSON API: the token as a bearer header."""
    with httpx.Client(base_url=dashboard.base, headers={"Authorization": f"Bearer {dashboard.token}"},
                      timeout=30) as client:
        yield client


# ---- the browser ---------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("Playwright for Python is not installed (pip install playwright)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@dataclass
class BrowserPage:
    page: Any
    dashboard: Dashboard
    errors: list[str]

    def goto(self, path: str) -> Any:
        return self.page.goto(self.dashboard.base + path)

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def page(browser: Any, dashboard: Dashboard) -> Iterator[BrowserPage]:
    """A signed-in page (the token URL once, then the cookie). Fails the test on any browser console error,
    uncaught exception or failed request."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.on("response", lambda r: errors.append(f"HTTP {r.status} {r.url}") if r.status >= 400 else None)
    resp = pg.goto(dashboard.login_url("/"))
    assert resp is not None and resp.ok and "?token=" not in pg.url, "the token URL did not sign in"
    bp = BrowserPage(pg, dashboard, errors)
    try:
        yield bp
        seen = list(errors)  # closing the page aborts a live event stream: that is not the page's error
    finally:
        context.close()
    assert not seen, f"the browser reported errors: {seen}"
