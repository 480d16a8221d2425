"""Placeholder replaced by the sweep driver (issue 5)."""

from __future__ import annotations

from typing import Any


def drive_sweeps(ws: Any, now: float) -> None:
    """Advance every active sweep by one step (no sweeps yet)."""
    return None
