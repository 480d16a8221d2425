"""Hosts on one machine: Linux network namespaces joined by veth pairs to a bridge.

Each host is a network namespace with its own address on a private /24, its own host name (a UTS namespace
per process, set by ``unshare``) and its own folder: the other hosts' folders are hidden from its processes
(a mount namespace each, with an empty tmpfs over every other host's folder). Its processes run with
``ip netns exec``, from the host's own folder, with a HOME of their own and an environment that carries
nothing of the test's (no CLUSTER_* variable): the only thing a host knows about the cluster is the config
file written into its folder.

Names are unique per test session (``mh<pid>``) and everything is removed in :meth:`Network.close`, which
also runs at interpreter exit, so a failed or interrupted session leaves no namespace, link or process.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[2]
KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "CI", "MNIST_DIR")


def available() -> str | None:
    """None when namespaces can be made here, else why not (the skip reason)."""
    if sys.platform != "linux":
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "multi-host tests create network namespaces: they need root"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian: iproute2, util-linux)"
    probe = f"mhprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr.strip()}")
    return out


@dataclass
class Host:
    """One namespace: name, address, folder, and the processes started in it."""

    name: str
    netns: str
    address: str
    veth: str  # the bridge side of its link: `ip link set <veth> down` cuts the host off
    root: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    hidden: tuple[Path, ...] = ()  # the other hosts' folders

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        env = {k: os.environ[k] for k in KEEP_ENV if k in os.environ}
        env.setdefault("PYTHONPATH", str(REPO))
        return env | {"HOME": str(self.root / "home"), "PYTHONUNBUFFERED": "1", "TMPDIR": str(self.root / "tmp")} \
            | dict(extra or {})

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside this host: its network namespace, its own host name, and a mount namespace in
        which every other host's folder is an empty read-only tmpfs (it cannot read their files)."""
        hide = "".join(f" && mount -t tmpfs -o ro,size=4k,mode=0555 mh-hidden {shlex.quote(str(d))}"
                       for d in self.hidden)
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--mount", "--propagation", "private", "--",
                "sh", "-c", f'hostname "$0"{hide} && exec "$@"', self.name, *argv]

    def run(self, argv: Sequence[str], *, timeout: float = 120, check: bool = True,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run to completion in this host, from its folder."""
        out = subprocess.run(self.argv(argv), cwd=self.root, env=self.env(env), capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
        if check and out.returncode != 0:
            raise AssertionError(f"on {self.name}: {' '.join(argv)} exited {out.returncode}\n"
                                 f"stdout:\n{out.stdout[-3000:]}\nstderr:\n{out.stderr[-3000:]}")
        return out

    def start(self, argv: Sequence[str], log: str, *, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a long-running process in this host (own session; output to <root>/<log>)."""
        with open(self.root / log, "ab") as out:
            proc = subprocess.Popen(self.argv(argv), cwd=self.root, env=self.env(env), stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        try:
            return (self.root / name).read_text(errors="replace")
        except OSError:
            return ""

    def pids(self) -> list[int]:
        out = sh("ip", "netns", "pids", self.netns, check=False)
        return [int(p) for p in out.stdout.split()]

    def stop_all(self, grace: float = 20.0) -> None:
        """SIGTERM to what we started (their sessions), then SIGKILL to whatever still lives in the namespace."""
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
        self.kill_all()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
        self.procs.clear()

    def kill_all(self) -> None:
        victims = []
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                p.kill()
                victims.append(p)
        psutil.wait_procs(victims, timeout=10)

    def link(self, up: bool) -> None:
        """Connect (True) or cut (False) this host's link to the bridge."""
        sh("ip", "link", "set", self.veth, "up" if up else "down")


def remove_stale() -> None:
    """Namespaces and bridges an earlier session left (killed before it could clean up): its pid is gone."""
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        head = name.split("-", 1)[0]
        if not (head.startswith("mh") and head[2:].isdigit()) or psutil.pid_exists(int(head[2:])):
            continue
        for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
            with contextlib.suppress(psutil.Error):
                psutil.Process(int(pid)).kill()
        sh("ip", "netns", "del", name, check=False)
        sh("ip", "link", "del", f"{head}br", check=False)


class Network:
    """A bridge and one namespace per host; the test process itself is on the bridge too (``observer``)."""

    def __init__(self, base: Path, names: Sequence[str]) -> None:
        pid = os.getpid()
        self.prefix = f"mh{pid}"
        # a /24 of 10.0.0.0/8 derived from the pid: sessions running side by side do not collide
        self.subnet = f"10.{200 + pid % 50}.{(pid // 50) % 250}"
        self.bridge = f"{self.prefix}br"
        self.observer = f"{self.subnet}.254"
        self.hosts: dict[str, Host] = {}
        self._closed = False
        atexit.register(self.close)
        remove_stale()
        try:
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "addr", "add", f"{self.observer}/24", "dev", self.bridge)
            sh("ip", "link", "set", self.bridge, "up")
            for i, name in enumerate(names, start=1):
                self.hosts[name] = self._add_host(base, name, i)
            for host in self.hosts.values():
                host.hidden = tuple(h.root for h in self.hosts.values() if h is not host)
        except BaseException:
            self.close()
            raise

    def _add_host(self, base: Path, name: str, index: int) -> Host:
        netns = f"{self.prefix}-{name}"
        outside, inside = f"{self.prefix}h{index}", f"{self.prefix}n{index}"  # interface names: <= 15 characters
        address = f"{self.subnet}.{index}"
        root = base / name
        for sub in ("home", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        host = Host(name=name, netns=netns, address=address, veth=outside, root=root)
        sh("ip", "netns", "add", netns)
        self.hosts[name] = host  # from here on close() removes it
        sh("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        sh("ip", "link", "set", inside, "netns", netns)
        sh("ip", "link", "set", outside, "master", self.bridge)
        sh("ip", "link", "set", outside, "up")
        for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "set", inside, "name", "eth0"],
                    ["ip", "addr", "add", f"{address}/24", "dev", "eth0"], ["ip", "link", "set", "eth0", "up"]):
            sh("ip", "netns", "exec", netns, *cmd)
        return host

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def close(self) -> None:
        """Stop every process of every host, remove the namespaces, links and the bridge. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for host in reversed(list(self.hosts.values())):
            with contextlib.suppress(Exception):
                host.stop_all(grace=5.0)
            with contextlib.suppress(Exception):
                host.kill_all()
            sh("ip", "link", "del", host.veth, check=False)  # removes its peer in the namespace too
            sh("ip", "netns", "del", host.netns, check=False)
        sh("ip", "link", "del", self.bridge, check=False)
