"""`cluster ui`: serve the dashboard (runs, live logs, metric charts, sweeps, models, pools) in a browser."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
from pathlib import Path

from cluster.errors import ConfigError, UsageError
from cluster.settings import Settings
from cluster.workspace import Workspace

ENV_TOKEN = "CLUSTER_UI_TOKEN"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("ui", help="serve the dashboard in a browser (loopback only by default)",
                       description="Serve the web dashboard: experiments, runs with live logs and metric charts, "
                       "sweeps, models and node pools, plus a JSON API under /api/. Every request needs the token: "
                       f"${ENV_TOKEN}, else ui_token from the config file, else a new one printed here.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, help="port (default: ui_port from the config file, else 8780)")
    p.add_argument("--config", help="path of config.json (default: discovered)")
    p.add_argument("--print-url", action="store_true", help="print the sign-in URL of the running dashboard "
                   "(from the config file) and exit")
    p.set_defaults(func=cmd_ui)


def _config_extras(settings: Settings) -> dict[str, object]:
    if not settings.source.endswith(".json"):
        return {}
    try:
        data = json.loads(Path(settings.source).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cmd_ui(args: argparse.Namespace) -> int:
    settings = Settings.discover(args.config)
    extras = _config_extras(settings)
    if args.print_url:
        if not extras.get("ui_url") or not extras.get("ui_token"):
            raise ConfigError(f"no dashboard recorded in {settings.source}",
                              hint="`cluster up` starts one, or run `cluster ui`")
        print(f"{extras['ui_url']}?token={extras['ui_token']}")
        return 0
    token = os.environ.get(ENV_TOKEN) or str(extras.get("ui_token") or "")
    generated = not token
    token = token or secrets.token_urlsafe(24)
    port = args.port or int(str(extras.get("ui_port") or 8780))
    if not 0 < port < 65536:
        raise UsageError(f"bad port {port}")
    if args.host not in LOOPBACK:
        print(f"warning: binding to {args.host}: anyone who can reach port {port} and holds the token can read "
              "every run and cancel runs; put TLS in front of it (a reverse proxy)", file=sys.stderr)
    import uvicorn

    from cluster.ui import create_app

    app = create_app(Workspace(settings), token)
    shown = "localhost" if args.host in ("0.0.0.0", "::") else args.host
    where = f"http://{shown}:{port}/"
    print(f"dashboard for workspace {settings.workspace_name} at {where}" +
          (f"?token={token}" if generated else f"  (token: ${ENV_TOKEN} or ui_token in {settings.source})"),
          flush=True)
    uvicorn.run(app, host=args.host, port=port, log_level="warning", access_log=False,
                timeout_graceful_shutdown=3)
    return 0
