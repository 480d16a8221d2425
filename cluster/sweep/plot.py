"""A sweep's children plotted: one panel per hyperparameter, the primary metric of every child (``cluster sweep
show --plot``). Needs matplotlib (the ``plots`` extra)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cluster.errors import UsageError

_COLORS = {"Completed": "tab:blue", "Canceled": "tab:orange", "Failed": "tab:red"}


def write_plot(summary: Mapping[str, Any], path: Path) -> Path:
    """A PNG with one panel per hyperparameter: the primary metric of every child that reported it."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise UsageError("plotting needs matplotlib", hint="pip install 'cluster[plots]', or pass --no-plot") from e

    rows = list(summary.get("children", []))
    metric = summary.get("primary_metric", {}).get("name", "metric")
    space = summary.get("sampling", {}).get("space", {})
    names = list(space) or sorted({n for r in rows for n in r.get("hyperparameters", {})}) or ["(none)"]
    fig = Figure(figsize=(max(4.5 * len(names), 6.0), 4.2), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    best_id = (summary.get("best") or {}).get("run_id")
    for ax, name in zip(axes, names, strict=True):
        points = [(r["hyperparameters"].get(name), r["best_primary_metric"], r) for r in rows
                  if r.get("best_primary_metric") is not None and name in r.get("hyperparameters", {})]
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x, _y, _r in points)
        if numeric:
            xs: list[Any] = [float(x) for x, _y, _r in points]
            if space.get(name, {}).get("type") in ("loguniform", "qloguniform") and xs and min(xs) > 0:
                ax.set_xscale("log")
        else:
            cats = sorted({json.dumps(x) for x, _y, _r in points})
            xs = [cats.index(json.dumps(x)) for x, _y, _r in points]
            ax.set_xticks(range(len(cats)), labels=[c.strip('"') for c in cats])
        labeled = False
        for status, color in _COLORS.items():
            sel = [(x, p[1]) for x, p in zip(xs, points, strict=True) if p[2]["status"] == status]
            if sel:
                ax.scatter([s[0] for s in sel], [s[1] for s in sel], c=color, label=status, s=36, alpha=0.85)
                labeled = True
        best = [(x, p[1]) for x, p in zip(xs, points, strict=True) if p[2]["run_id"] == best_id]
        if best:
            ax.scatter([best[0][0]], [best[0][1]], marker="*", s=220, c="gold", edgecolors="black", label="best",
                       zorder=3)
        if not points:
            ax.text(0.5, 0.5, f"no child reported {metric!r} yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        if labeled:
            ax.legend(fontsize="small")
    goal = summary.get("primary_metric", {}).get("goal")
    fig.suptitle(f"sweep {summary.get('parent_id', '')}\n{metric} ({goal}) against each hyperparameter",
                 fontsize="medium")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, format="png")
    return path
