"""The multi-host harness: five hosts in network namespaces, a cluster spread over them, over TLS.

    infra   10.x.y.1  Redis (TLS port only) and the S3 gateway (HTTPS), `cluster up --listen <its address>`
    ctl     10.x.y.2  the controller (`cluster controller --config FILE --no-autoscale`)
    n1, n2  10.x.y.3/4  static nodes (`cluster worker --config FILE --pool P`), own work and cache dirs
    client  10.x.y.5  submits from its own folder (.cluster/config.json there, nothing else)

Each host gets only the file `cluster config export --for node|controller|client` wrote on infra (copied as
an operator would copy it). The test process itself watches from the bridge's address with infra's own
config (it is the harness, not a host). Skipped, with the reason, without root or `ip netns`; failing in CI.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cluster import Workspace, layout
from cluster.settings import Settings
from tests.conftest import IN_CI, SHARED_MNIST, skip_or_fail
from tests.multihost import netns
from tests.multihost.netns import Host, Network

HOSTS = ("infra", "ctl", "n1", "n2", "client")
POOL = "mhpool"
PY = sys.executable


@dataclass
class MultiHost:
    net: Network
    settings: Settings  # infra's admin config: what the harness watches with (from the bridge address)
    ws: Workspace

    def __getitem__(self, name: str) -> Host:
        return self.net[name]

    node_procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start_node(self, host: Host) -> None:
        self.node_procs[host.name] = host.start([PY, "-m", "cluster.cli", "worker", "--config", "config.json",
                                                 "--pool", POOL, "--work-dir", "work", "--cache-dir", "cache"],
                                                "node.log")

    def nodes(self) -> dict[str, dict[str, str]]:
        """Live node records by host name (the heartbeat hash of each node)."""
        out: dict[str, dict[str, str]] = {}
        for name in self.ws.redis.smembers(layout.RK_NODES):
            h: dict[str, str] = self.ws.redis.hgetall(layout.rk_node(str(name)))  # type: ignore[assignment]
            if h and h.get("pool") == POOL and time.time() - float(h.get("heartbeat") or 0) < 5:
                out[h.get("host", "")] = h | {"name": str(name)}
        return out

    def wait_nodes(self, *hosts: str, timeout: float = 90.0) -> dict[str, dict[str, str]]:
        deadline = time.monotonic() + timeout
        while True:
            live = self.nodes()
            if set(hosts) <= set(live):
                return live
            for h in hosts:
                proc = self.node_procs.get(h)
                if proc is not None and proc.poll() is not None:
                    pytest.fail(f"the node on {h} exited ({proc.returncode}):\n{self.net[h].log('node.log')[-3000:]}")
            if time.monotonic() > deadline:
                logs = "\n".join(f"--- {h}\n{self.net[h].log('node.log')[-2000:]}" for h in hosts)
                pytest.fail(f"nodes on {hosts} sent no heartbeat within {timeout}s (live: {sorted(live)})\n{logs}")
            time.sleep(0.3)

    def client(self, script: str, *args: str, timeout: float = 300) -> dict:
        """Run a Python script (tests/multihost/scripts/<script>) on the client host, from its folder; its last
        line of output is JSON."""
        out = self.net["client"].run([PY, str(Path(__file__).parent / "scripts" / script), *args], timeout=timeout)
        return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def multihost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MultiHost]:
    reason = netns.available()
    if reason:
        skip_or_fail(reason)
    if not IN_CI and shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed: nodes would run scripts unsandboxed")
    base = tmp_path_factory.mktemp("hosts")
    net = Network(base, HOSTS)
    try:
        infra = net["infra"]
        up = infra.run([PY, "-m", "cluster.cli", "up", "--state-dir", ".cluster", "--listen", infra.address,
                        "--no-controller", "--no-ui"], timeout=120)
        assert "rediss://" in up.stdout and "https://" in up.stdout, up.stdout
        for host, role in (("ctl", "controller"), ("n1", "node"), ("n2", "node"), ("client", "client")):
            out = infra.run([PY, "-m", "cluster.cli", "config", "export", "--for", role, "--state-dir", ".cluster",
                             "--out", f"export-{host}.json"])
            assert "warning" not in out.stderr, out.stderr
            # "copied to the other host": the only file it gets
            target = net[host].root / (".cluster/config.json" if host == "client" else "config.json")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(infra.root / f"export-{host}.json", target)
        settings = Settings.from_file(infra.root / ".cluster" / "config.json")
        mh = MultiHost(net=net, settings=settings, ws=Workspace(settings))
        net["ctl"].start([PY, "-m", "cluster.cli", "controller", "--config", "config.json", "--no-autoscale",
                          "--spare-nodes", "0", "--metrics-port", "0", "--state-dir", "state"], "controller.log")
        mh.start_node(net["n1"])
        mh.start_node(net["n2"])
        mh.wait_nodes("n1", "n2")
        yield mh
    finally:
        try:
            for name in ("n1", "n2", "ctl", "client"):
                net[name].stop_all(grace=25.0)
            net["infra"].run([PY, "-m", "cluster.cli", "down", "--state-dir", ".cluster"], check=False, timeout=60)
        finally:
            net.close()


@pytest.fixture(scope="session")
def mnist_uploaded(multihost: MultiHost) -> str:
    """MNIST in the datastore, uploaded from the client host (ds.upload, as in the tutorial)."""
    if not (SHARED_MNIST / "SHA256SUMS").exists():
        skip_or_fail(f"real MNIST not found at {SHARED_MNIST}")
    data = multihost["client"].root / "data"
    shutil.copytree(SHARED_MNIST, data, dirs_exist_ok=True)  # the client's own copy of the data
    out = multihost.client("upload.py", "data", "mnist")
    assert out["uploaded"] >= 4, out
    return "mnist"
