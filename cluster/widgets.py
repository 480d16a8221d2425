"""The notebook's live view of a run or a sweep: ``RunDetails(run).show()`` (Azure's ``azureml.widgets``).

It shows the status, the metrics (a sweep: its children, best first) and the last lines of the log, refreshed every
few seconds until the run ends. With ipywidgets (``pip install 'cluster[widgets]'``) it is a widget that updates in
place; without it an HTML display that is replaced in place (IPython's ``display(..., display_id=True)``). Outside
Jupyter ``show()`` prints a text snapshot. ``get_html()`` gives the HTML once, for anything else.
"""

from __future__ import annotations

import html
import logging
import threading
from typing import Any

from cluster import layout
from cluster.errors import UsageError

log = logging.getLogger(__name__)

TAIL_LINES = 20
REFRESH_SECONDS = 3.0


def log_tail(run: Any, lines: int = TAIL_LINES) -> list[str]:
    """The run's last ``lines`` log lines: from the live stream while there is one, else the archived log (the
    committed attempt's, where the node uploads it)."""
    from cluster.logstream import archived

    ws = run.experiment.workspace
    entries: Any = ws.redis.xrevrange(layout.rk_run_log(run.id), count=lines + 1)
    live = [fields.get("l", "") for _id, fields in reversed(entries) if fields.get("eof") != "1"]
    if live:
        return live[-lines:]
    return archived(ws.store, run.files_prefix())[-lines:]


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    head = "".join(f"<th style='text-align:left;padding:2px 8px'>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='padding:2px 8px'>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list) and len(value) > 8:
        return f"{_fmt(value[-1])} (last of {len(value)})"
    return str(value)


class RunDetails:
    """``RunDetails(run).show()``: a live view of a run (or a sweep: ``HyperDriveRun``) in a notebook."""

    def __init__(self, run_instance: Any) -> None:
        if not hasattr(run_instance, "get_details") or not hasattr(run_instance, "experiment"):
            raise UsageError(f"RunDetails takes a run, got {type(run_instance).__name__}",
                             hint="RunDetails(exp.submit(config)).show()")
        self.run = run_instance
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- what is shown ------------------------------------------------------------------------------
    def get_html(self) -> str:
        details = self.run.get_details()
        status = details["status"]
        color = {"Completed": "#2e7d32", "Failed": "#c62828", "Canceled": "#6d4c41"}.get(status, "#1565c0")
        parts = [f"<div class='cluster-run-details'><b>{html.escape(type(self.run).__name__)}</b> "
                 f"{html.escape(self.run.id)} &mdash; <b style='color:{color}'>{html.escape(status)}</b>",
                 _table([(details.get("experiment"), details.get("target"), details.get("node") or "-",
                          details.get("attempt"), " ".join(details.get("arguments") or []))],
                        ("Experiment", "Target", "Node", "Attempt", "Arguments"))]
        if hasattr(self.run, "get_children_sorted_by_primary_metric"):  # a sweep: its children, best first
            rows = self.run.get_children_sorted_by_primary_metric()
            parts.append("<b>Children</b>" + _table(
                [(r["run_id"], r["status"], r["best_primary_metric"], r["hyperparameters"], r.get("note", ""))
                 for r in rows], ("Run", "Status", "Best metric", "Hyperparameters", "Note")))
        else:
            metrics = self.run.get_metrics()
            if metrics:
                parts.append("<b>Metrics</b>" + _table(list(metrics.items()), ("Name", "Value")))
            tail = log_tail(self.run)
            if tail:
                parts.append(f"<b>Log</b> (last {len(tail)} lines)<pre style='max-height:20em;overflow:auto'>"
                             + html.escape("\n".join(tail)) + "</pre>")
        if details.get("error"):
            parts.append(f"<b>Error</b><pre>{html.escape(str(details['error'].get('message')))}</pre>")
        return "".join(parts) + "</div>"

    def _final(self) -> bool:
        return bool(self.run.get_status() in ("Completed", "Failed", "Canceled"))

    # -- showing it ---------------------------------------------------------------------------------
    def show(self, refresh_seconds: float = REFRESH_SECONDS) -> Any:
        """Display the view and refresh it in the background until the run ends. Returns the widget (or the
        display handle); outside Jupyter prints a text snapshot and returns None."""
        try:
            from IPython.core.display import HTML
            from IPython.core.getipython import get_ipython
            from IPython.display import display
        except ImportError:
            get_ipython = None  # type: ignore[assignment]
        if get_ipython is None or get_ipython() is None:
            print(self.text())
            return None
        try:
            import ipywidgets
        except ImportError:
            ipywidgets = None
        if ipywidgets is not None:
            widget = ipywidgets.HTML(value=self.get_html())
            display(widget)
            self._start(lambda: setattr(widget, "value", self.get_html()), refresh_seconds)
            return widget
        handle = display(HTML(self.get_html()), display_id=True)
        self._start(lambda: handle.update(HTML(self.get_html())), refresh_seconds)
        return handle

    def _start(self, update: Any, every: float) -> None:
        if self._final():
            return

        def loop() -> None:
            while not self._stop.wait(every):
                try:
                    final = self._final()
                    update()
                except Exception as e:  # a server blip: try again next time
                    log.debug("RunDetails refresh failed: %s", e)
                    continue
                if final:
                    return

        self._thread = threading.Thread(target=loop, name=f"run-details-{self.run.id}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop refreshing."""
        self._stop.set()

    def text(self) -> str:
        details = self.run.get_details()
        lines = [f"{self.run.id}: {details['status']}"]
        lines += [f"  {k}: {_fmt(v)}" for k, v in self.run.get_metrics().items()]
        return "\n".join(lines)
