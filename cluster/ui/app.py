"""The dashboard's web app (FastAPI): server-rendered pages (Jinja2, htmx, uPlot) and a JSON API under
``/api/``, both behind the token check of :mod:`cluster.ui.auth`. It reads through the SDK only."""

from __future__ import annotations

import contextlib
import logging
import math
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from fastapi import FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from cluster import logstream, redisclient
from cluster.errors import ClusterError, NotFoundError, ServiceError, UsageError
from cluster.ui import stream
from cluster.ui.auth import SecurityHeaders, TokenAuth, derive
from cluster.ui.views import TEXT_PREVIEW_BYTES, Views
from cluster.workspace import Workspace

HERE = Path(__file__).resolve().parent
# a run's files are the script's output, i.e. untrusted: never active content in the dashboard's origin
_FILE_CSP = "sandbox; default-src 'none'; img-src 'self'; style-src 'unsafe-inline'"
PAGE_SIZE = 50


def create_app(ws: Workspace, token: str) -> Any:
    """The ASGI app for one workspace, guarded by ``token``."""
    views = Views(ws)
    app = FastAPI(title="cluster dashboard", version="1", lifespan=_lifespan, docs_url=None, redoc_url=None,
                  description="Runs, logs, metrics, sweeps, models and node pools of one cluster. Every call needs "
                              "`Authorization: Bearer <token>` (the `ui_token` of `.cluster/config.json`).")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters.update(ts=_ts, iso=_iso, dur=_dur, num=_num, size=_size)
    templates.env.globals.update(csrf=derive(token, "csrf"), workspace=ws.name)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.views = views

    def page(request: Request, template: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        return templates.TemplateResponse(request, template, ctx, status_code=status_code)

    @app.exception_handler(ClusterError)
    async def cluster_error(request: Request, exc: ClusterError) -> Response:
        code = 404 if isinstance(exc, NotFoundError) else 400 if isinstance(exc, UsageError) else 503
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=code)
        return page(request, "error.html", status_code=code, title=f"{code}", message=exc.message, hint=exc.hint)

    @app.exception_handler(redis.RedisError)
    async def redis_error(request: Request, exc: redis.RedisError) -> Response:
        return await cluster_error(request, ServiceError(f"Redis failed: {type(exc).__name__}: {exc}",
                                                         hint="`cluster status` checks every service"))

    # ---- pages ----------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home(request: Request) -> HTMLResponse:
        return page(request, "index.html", title="Experiments", experiments=views.experiments(), nav="experiments")

    @app.get("/experiments/{name}", response_class=HTMLResponse, include_in_schema=False)
    def experiment_page(request: Request, name: str, status: str = "", tag: str = "", sort: str = "submitted",
                        order: str = "desc", page_no: int = Query(1, alias="page", ge=1)) -> HTMLResponse:
        ctx = _experiment_ctx(views, name, status, tag, sort, order, page_no)
        template = "experiment_table.html" if request.headers.get("hx-request") else "experiment.html"
        return page(request, template, title=name, nav="experiments", **ctx)

    @app.get("/runs/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def run_page(request: Request, run_id: str) -> HTMLResponse:
        details = views.run_details(run_id)
        return page(request, "run.html", title=run_id, nav="experiments", d=details, files=views.files(run_id),
                    models=views.run_models(run_id))

    @app.get("/runs/{run_id}/panel", response_class=HTMLResponse, include_in_schema=False)
    def run_panel(request: Request, run_id: str) -> HTMLResponse:
        return page(request, "run_panel.html", d=views.run_details(run_id), files=views.files(run_id),
                    models=views.run_models(run_id))

    @app.get("/sweeps/{run_id}", response_class=HTMLResponse, include_in_schema=False)
    def sweep_page(request: Request, run_id: str, sort: str = "metric", order: str = "") -> HTMLResponse:
        s = views.sweep(run_id)
        fragment = bool(request.headers.get("hx-request"))
        # htmx stops polling on 286: a finished sweep's panel is sent one last time
        return page(request, "sweep_panel.html" if fragment else "sweep.html",
                    status_code=286 if fragment and s["final"] else 200, title=f"sweep {run_id}",
                    nav="experiments", s=s, rows=_sweep_rows(s, sort, order), sort=sort, order=order)

    @app.get("/models", response_class=HTMLResponse, include_in_schema=False)
    def models_page(request: Request) -> HTMLResponse:
        return page(request, "models.html", title="Models", nav="models", models=views.models())

    @app.get("/pools", response_class=HTMLResponse, include_in_schema=False)
    def pools_page(request: Request) -> HTMLResponse:
        template = "pools_panel.html" if request.headers.get("hx-request") else "pools.html"
        return page(request, template, title="Pools", nav="pools", pools=views.pools())

    # ---- JSON API -------------------------------------------------------------------------------
    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, Any]:
        """200 when the dashboard answers and the token is right."""
        return {"ok": True, "workspace": ws.name}

    @app.get("/api/experiments", tags=["runs"])
    def api_experiments() -> list[dict[str, Any]]:
        """Experiments with run counts (top-level and all, by status) and the latest activity (epoch seconds)."""
        return views.experiments()

    @app.get("/api/runs", tags=["runs"])
    def api_runs(experiment: str | None = None, status: str | None = None, tag: str | None = None,
                 sort: str = "submitted", order: str = "desc", limit: int = 50, offset: int = 0,
                 grouped: bool = False) -> dict[str, Any]:
        """Runs (sweep children included, each with its ``parent_id``), filtered by ``status`` (comma-separated)
        and ``tag`` (``key`` or ``key=value``), sorted by submitted|started|ended|duration|status|run_id or
        ``metric:<name>`` (runs without that value last), paginated with ``limit``/``offset``."""
        return views.runs(experiment, status=status, tag=tag, sort=sort, order=order, limit=limit, offset=offset,
                          grouped=grouped)

    @app.get("/api/runs/{run_id}", tags=["runs"])
    def api_run(run_id: str) -> dict[str, Any]:
        """``Run.get_details()`` plus ``metrics`` (``Run.get_metrics()``), the raw ``metric_events`` and the
        live ``metrics_cursor`` (pass it to the stream as ``metrics_after``)."""
        details: dict[str, Any] = _jsonable(views.run_details(run_id))
        return details

    @app.get("/api/runs/{run_id}/log", tags=["runs"])
    def api_log(run_id: str, after: str = "0-0", limit: int = Query(1000, ge=1, le=10000)) -> dict[str, Any]:
        """Log lines after the entry ``after`` (``0-0``: from the start): ``lines`` (id, line), ``next`` (pass it
        as ``after``), ``complete`` (the log has ended)."""
        run = views.run(run_id)
        final = ws.runs.status(run_id).is_final
        return stream.log_page(ws.redis, ws.store, run_id, run.files_prefix(), after, final, limit)

    @app.get("/api/runs/{run_id}/log/stream", tags=["runs"])
    async def api_log_stream(request: Request, run_id: str, after: str | None = None,
                             metrics_after: str | None = None) -> StreamingResponse:
        """Server-sent events: ``log`` (id, line), ``metric`` (a logged event), ``status``, then ``end``. Each
        event's id is ``<log entry>|<metric entry>``; reconnecting with ``Last-Event-ID`` (browsers do) or
        ``after``/``metrics_after`` resumes after it."""
        import anyio

        run = await anyio.to_thread.run_sync(views.run, run_id)
        last_id = request.headers.get("last-event-id")
        log_after, met_after = stream.parse_cursor(last_id or f"{after or ''}|{metrics_after or ''}")
        r = _async_redis(app, ws)
        feed = stream.follow(r, run_id, after=log_after, metrics_after=met_after,
                             read_archive=lambda: logstream.archived(ws.store, run.files_prefix()),
                             stored_status=lambda: ws.runs.stored_record(run_id).status.value,
                             disconnected=request.is_disconnected)
        return StreamingResponse(stream.guarded(feed, run_id), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    @app.get("/api/runs/{run_id}/files", tags=["runs"])
    def api_files(run_id: str) -> list[dict[str, Any]]:
        """The run's files (``Run.get_file_names()``) with size and kind (text, image, binary)."""
        return views.files(run_id)

    @app.get("/api/runs/{run_id}/files/{path:path}", tags=["runs"])
    def api_file(run_id: str, path: str, preview: bool = False) -> Response:
        """Download a file; ``preview=1`` shows it inline instead (text: its first 64 KiB)."""
        key = views.file_key(run_id, path)
        return _object_response(ws, key, path, preview)

    @app.post("/api/runs/{run_id}/cancel", tags=["runs"])
    def api_cancel(run_id: str) -> dict[str, Any]:
        """``Run.cancel()`` (a sweep: ``HyperDriveRun.cancel()``). With the cookie, send ``X-CSRF-Token``."""
        details = views.run_details(run_id)
        if details["is_sweep"]:
            from cluster.sweep.run import HyperDriveRun

            outcome = HyperDriveRun.from_id(ws, run_id).cancel()
        else:
            outcome = views.run(run_id).cancel()
        return {"run_id": run_id, "outcome": outcome, "status": ws.runs.status(run_id).value}

    @app.get("/api/sweeps/{run_id}", tags=["sweeps"])
    def api_sweep(run_id: str) -> dict[str, Any]:
        """``HyperDriveRun.get_summary(live=True)`` plus ``progress`` and the sampled ``parameters``."""
        summary: dict[str, Any] = _jsonable(views.sweep(run_id))
        return summary

    @app.get("/api/models", tags=["models"])
    def api_models() -> list[dict[str, Any]]:
        """Every model version: name, version, id, files (sha256), tags, source run and experiment."""
        return views.models()

    @app.get("/api/models/{name}/{version}/files/{path:path}", tags=["models"])
    def api_model_file(name: str, version: int, path: str) -> Response:
        """Download one file of a model version."""
        return _object_response(ws, views.model_file_key(name, version, path), path, False)

    @app.get("/api/pools", tags=["compute"])
    def api_pools() -> list[dict[str, Any]]:
        """Each pool: spec, the controller's last status (nodes by state, queued/running, decision and why),
        scaling events (oldest first) and its nodes; pools of hand-started nodes too."""
        return views.pools()

    @app.get("/api/nodes", tags=["compute"])
    def api_nodes() -> list[dict[str, Any]]:
        """Every node: pool, state (idle/busy/draining, or lost after 10 s of silence), current run."""
        return views.nodes()

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def api_docs(request: Request) -> HTMLResponse:
        """The API reference, rendered here from the OpenAPI schema (no CDN: works offline)."""
        return page(request, "api.html", title="API", nav="api", ops=_operations(app.openapi()))

    return SecurityHeaders(TokenAuth(app, token))


def _operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    ops = []
    for path, methods in schema.get("paths", {}).items():
        for method, op in methods.items():
            params = [{"name": p["name"], "in": p["in"], "required": p.get("required", False),
                       "type": p.get("schema", {}).get("type") or "/".join(
                           t.get("type", "") for t in p.get("schema", {}).get("anyOf", []) if t.get("type")),
                       "default": p.get("schema", {}).get("default")} for p in op.get("parameters", [])]
            ops.append({"method": method.upper(), "path": path, "summary": op.get("summary", ""),
                        "description": op.get("description", "").replace("``", ""),
                        "tag": (op.get("tags") or [""])[0],
                        "params": params})
    return ops


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # build (or load) every experiment's run index in the background, so the first visitor does not wait
    threading.Thread(target=_warm, args=(app.state.views,), name="ui-index-warmup", daemon=True).start()
    yield
    r = getattr(app.state, "aredis", None)
    if r is not None:
        await r.aclose()


def _warm(views: Views) -> None:
    try:
        views.experiments()
    except Exception as e:  # a cache warm-up: the first request does the work instead
        logging.getLogger("cluster.ui").warning("could not warm the run index: %s", e)


def _async_redis(app: FastAPI, ws: Workspace) -> Any:
    import redis.asyncio as aioredis

    r = getattr(app.state, "aredis", None)
    if r is None:
        # the socket timeout must outlast a blocking XREAD (stream.BLOCK_MS)
        r = aioredis.Redis.from_url(ws.settings.redis_url, decode_responses=True, socket_connect_timeout=3,
                                    socket_timeout=stream.BLOCK_MS / 1000 + 20, health_check_interval=30,
                                    **redisclient.tls_kwargs(ws.settings))
        app.state.aredis = r
    return r


def _object_response(ws: Workspace, key: str, path: str, preview: bool) -> Response:
    from cluster.ui.views import file_kind

    name = path.rsplit("/", 1)[-1]
    kind = file_kind(name)
    if preview and kind == "text":
        with ws.store._errors(f"read {key}"):
            resp = ws.store.client.get_object(ws.store.bucket, key, length=TEXT_PREVIEW_BYTES)
            try:
                data = resp.read()
            finally:
                resp.close()
                resp.release_conn()
        return Response(data.decode("utf-8", "replace"), media_type="text/plain; charset=utf-8",
                        headers={"content-security-policy": _FILE_CSP})
    import mimetypes

    mime = mimetypes.guess_type(name)[0] or "application/octet-stream"
    if kind == "text":
        mime = "text/plain; charset=utf-8"
    with ws.store._errors(f"read {key}"):
        resp = ws.store.client.get_object(ws.store.bucket, key)

    def body() -> Iterator[bytes]:
        try:
            yield from resp.stream(256 * 1024)
        finally:
            resp.close()
            resp.release_conn()

    inline = preview and kind == "image"
    disposition = f'{"inline" if inline else "attachment"}; filename="{name.replace(chr(34), "")}"'
    return StreamingResponse(body(), media_type=mime if inline or kind != "binary" else "application/octet-stream",
                             headers={"content-disposition": disposition, "content-security-policy": _FILE_CSP})


def _experiment_ctx(views: Views, name: str, status: str, tag: str, sort: str, order: str,
                    page_no: int) -> dict[str, Any]:
    order = order if order in ("asc", "desc") else "desc"
    data = views.runs(name, status=status or None, tag=tag or None, sort=sort, order=order,
                      limit=PAGE_SIZE, offset=(page_no - 1) * PAGE_SIZE, grouped=True)
    pages = max(1, math.ceil(data["total"] / PAGE_SIZE))
    return {"name": name, "data": data, "status": status, "tag": tag, "sort": sort, "order": order,
            "page_no": page_no, "pages": pages,
            "statuses": ["Queued", "Preparing", "Running", "Finalizing", "Completed", "Failed", "Canceled"]}


def _sweep_rows(s: dict[str, Any], sort: str, order: str) -> list[dict[str, Any]]:
    rows = list(s.get("children", []))
    if sort == "metric":
        ranked = [r for r in rows if r.get("best_primary_metric") is not None]
        other = [r for r in rows if r.get("best_primary_metric") is None]
        maximize = s.get("primary_metric", {}).get("goal", "").lower().startswith("max")
        desc = (order or ("desc" if maximize else "asc")) == "desc"
        ranked.sort(key=lambda r: r["best_primary_metric"], reverse=desc)
        return ranked + other
    if sort == "index":
        return sorted(rows, key=lambda r: r.get("index", 0), reverse=order == "desc")
    return rows


def _jsonable(value: Any) -> Any:
    """Non-finite floats (a metric may be nan) as strings: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


# ---- template filters ---------------------------------------------------------------------------

def _ts(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _iso(stamp: str | None) -> str:
    if not stamp:
        return "-"
    try:
        return datetime.fromisoformat(stamp).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except ValueError:
        return stamp


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes}m{sec:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
