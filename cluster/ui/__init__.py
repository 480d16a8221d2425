"""The dashboard: a web app (FastAPI, server-side templates, vendored htmx and uPlot) over the SDK.

``cluster ui`` serves it; ``cluster up`` starts it as one more service. See docs/dashboard.md.
"""

from __future__ import annotations

from typing import Any


def create_app(ws: Any, token: str) -> Any:
    """The ASGI app for a workspace, guarded by ``token`` (imports FastAPI only when called)."""
    from cluster.ui.app import create_app as _create

    return _create(ws, token)


__all__ = ["create_app"]
