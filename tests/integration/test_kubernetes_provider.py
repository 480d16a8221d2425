"""The Kubernetes provider, with the real ``kubernetes`` client talking HTTP to a local fake API server.

The fake implements just the pod endpoints the provider uses (create, list by label selector, get,
delete) with bodies shaped like the real API's, validates names and labels the way the API server does,
and records every request. Nothing in the client is patched.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client as k8s

from cluster.autoscale import PoolSpec
from cluster.errors import ConfigError, CredentialsError, ServiceError, UsageError
from cluster.providers import Provider
from cluster.providers.kubernetes import KubernetesProvider, pod_prefix, pool_label

pytestmark = pytest.mark.integration

NS = "test-ns"
POD_NAME_RE = re.compile(r"^node-[a-z0-9]([-a-z0-9]*[a-z0-9])?-[0-9a-f]{8}$")
DNS_LABEL_RE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")


# ---- the fake API server ------------------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    headers: dict[str, str]


@dataclass
class FakeKubeAPI:
    """An in-memory pod store behind ``/api/v1/namespaces/{ns}/pods[/{name}]``."""

    pods: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[Recorded] = field(default_factory=list)
    forbidden_namespaces: set[str] = field(default_factory=set)
    #: (status, reason) to answer the next request with, whatever it is.
    fail_next: tuple[int, str] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    resource_version: int = 1000

    def handle(self, method: str, raw_path: str, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        url = urlsplit(raw_path)
        query = parse_qs(url.query)
        with self.lock:
            self.requests.append(Recorded(method, url.path, query, body, headers))
            if self.fail_next is not None:
                (code, reason), self.fail_next = self.fail_next, None
                return code, status(code, reason, f"injected failure {code}")
            m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+))?", url.path)
            if m is None:
                return 404, status(404, "NotFound", "the server could not find the requested resource")
            ns, name = m.group(1), m.group(2)
            verb = {"POST": "create", "GET": "get" if name else "list", "DELETE": "delete"}.get(method)
            if verb is None or (method == "POST" and name):
                return 405, status(405, "MethodNotAllowed", f"{method} is not allowed here")
            if ns in self.forbidden_namespaces:
                return 403, status(
                    403,
                    "Forbidden",
                    f'pods is forbidden: User "system:serviceaccount:default:cluster" cannot {verb} '
                    f'resource "pods" in API group "" in the namespace "{ns}"',
                )
            self.resource_version += 1
            if verb == "create":
                return self._create(ns, body)
            if verb == "list":
                selector = query.get("labelSelector", [""])[0]
                items = [p for (pns, _), p in sorted(self.pods.items()) if pns == ns and matches(p, selector)]
                return 200, {
                    "kind": "PodList",
                    "apiVersion": "v1",
                    "metadata": {"resourceVersion": str(self.resource_version)},
                    "items": items,
                }
            pod = self.pods.get((ns, name))
            if pod is None:
                return 404, status(404, "NotFound", f'pods "{name}" not found', name=name)
            if verb == "delete":
                del self.pods[(ns, name)]
                pod = {**pod, "metadata": {**pod["metadata"], "deletionTimestamp": now_iso()}}
            return 200, pod

    def _create(self, ns: str, pod: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(pod, dict) or pod.get("kind") != "Pod" or pod.get("apiVersion") != "v1":
            return 400, status(400, "BadRequest", "expected a v1 Pod")
        meta = pod.get("metadata") or {}
        name = meta.get("name", "")
        problems = []
        if not DNS_LABEL_RE.match(name):
            problems.append(f"metadata.name: Invalid value: {name!r}: must be a lowercase RFC 1123 label")
        for key, value in (meta.get("labels") or {}).items():
            if not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(value) or len(value) > 63:
                problems.append(f"metadata.labels: Invalid value: {key}={value!r}")
        if meta.get("namespace") not in (None, ns):
            problems.append("metadata.namespace: does not match the namespace of the request")
        if not (pod.get("spec") or {}).get("containers"):
            problems.append("spec.containers: Required value")
        if problems:
            return 422, status(422, "Invalid", f'Pod "{name}" is invalid: ' + "; ".join(problems))
        if (ns, name) in self.pods:
            return 409, status(409, "AlreadyExists", f'pods "{name}" already exists', name=name)
        stored = {
            **pod,
            "metadata": {
                **meta,
                "namespace": ns,
                "uid": str(uuid.uuid4()),
                "resourceVersion": str(self.resource_version),
                "creationTimestamp": now_iso(),
            },
            "status": {"phase": "Pending"},
        }
        self.pods[(ns, name)] = stored
        return 201, stored

    def set_phase(self, name: str, phase: str, ns: str = NS) -> None:
        with self.lock:
            self.pods[(ns, name)]["status"]["phase"] = phase

    def pod(self, name: str, ns: str = NS) -> dict[str, Any]:
        with self.lock:
            return self.pods[(ns, name)]

    def calls(self, method: str | None = None) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if method is None or r.method == method]


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def status(code: int, reason: str, message: str, name: str | None = None) -> dict[str, Any]:
    details: dict[str, Any] = {"kind": "pods"}
    if name:
        details["name"] = name
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    }


def matches(pod: dict[str, Any], selector: str) -> bool:
    """Equality-based label selectors: ``a=b``, ``a==b``, ``a!=b``, comma-separated (all must hold)."""
    labels = pod["metadata"].get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        else:
            key, value = re.split("==?", term, maxsplit=1)
            if labels.get(key) != value:
                return False
    return True


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in self.headers.items()}
        code, payload = self.server.fake.handle(self.command, self.path, body, headers)
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeKubeAPI) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.fake = fake


# ---- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeKubeAPI, str]]:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    api = FakeKubeAPI()
    server = FakeServer(api)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-kube-api", daemon=True)
    thread.start()
    try:
        yield api, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def api(fake: tuple[FakeKubeAPI, str]) -> FakeKubeAPI:
    return fake[0]


@pytest.fixture
def api_client(fake: tuple[FakeKubeAPI, str]) -> Iterator[k8s.ApiClient]:
    client = k8s.ApiClient(k8s.Configuration(host=fake[1]))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def provider(api_client: k8s.ApiClient) -> KubernetesProvider:
    return KubernetesProvider(namespace=NS, image="registry.example/cluster:1.2", api_client=api_client)


POOL = PoolSpec("cpu-pool", vm_size="medium", max_nodes=4)
OTHER = PoolSpec("gpu-pool", vm_size="STANDARD_D3_V2")


# ---- tests -----------------------------------------------------------------------------------------------


def test_is_a_provider(provider: KubernetesProvider) -> None:
    assert isinstance(provider, Provider)
    assert provider.name == "kubernetes"


def test_start_nodes_creates_pods(api: FakeKubeAPI, provider: KubernetesProvider) -> None:
    names = provider.start_nodes(POOL, 2)

    assert len(names) == 2 and len(set(names)) == 2
    for name in names:
        assert POD_NAME_RE.match(name) and name.startswith("node-cpu-pool-"), name
    posts = api.calls("POST")
    assert [r.path for r in posts] == [f"/api/v1/namespaces/{NS}/pods"] * 2
    assert [r.body["metadata"]["name"] for r in posts] == names

    for name in names:
        pod = api.pod(name)
        meta, spec = pod["metadata"], pod["spec"]
        assert meta["labels"] == {"app.kubernetes.io/name": "cluster-node", "cluster/pool": "cpu-pool"}
        assert meta["namespace"] == NS
        assert spec["restartPolicy"] == "Never"
        (container,) = spec["containers"]
        assert container["image"] == "registry.example/cluster:1.2"
        assert container["command"] == ["cluster", "worker", "--managed", "--pool", "cpu-pool", "--node-name", name,
                                        "--isolation", "required", "--network", "host",  # a pod refuses no sandbox
                                        "--max-output-bytes", str(10 * 1024**3), "--max-output-files", "10000",
                                        "--max-cache-bytes", str(20 * 1024**3), "--checkpoint-seconds", "5"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["CLUSTER_CONFIG"] == "/etc/cluster/config.json"
        assert container["resources"] == {
            "requests": {"cpu": "2", "memory": "4Gi"},
            "limits": {"cpu": "2", "memory": "4Gi"},
        }
        (mount,) = container["volumeMounts"]
        assert mount == {"name": "cluster-config", "mountPath": "/etc/cluster", "readOnly": True}
        (volume,) = spec["volumes"]
        assert volume["name"] == "cluster-config"
        assert volume["secret"]["secretName"] == "cluster-config"
        assert volume["secret"]["items"] == [{"key": "node-config.json", "path": "config.json"}]
        assert volume["secret"]["defaultMode"] == 0o440
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True and context["allowPrivilegeEscalation"] is False
        assert context["seccompProfile"] == {"type": "RuntimeDefault"} and context["capabilities"]["drop"] == ["ALL"]


def test_start_zero_nodes_sends_nothing(api: FakeKubeAPI, provider: KubernetesProvider) -> None:
    assert provider.start_nodes(POOL, 0) == []
    assert api.calls() == []
    with pytest.raises(UsageError):
        provider.start_nodes(POOL, -1)


def test_size_alias_becomes_resources(api: FakeKubeAPI, provider: KubernetesProvider) -> None:
    (name,) = provider.start_nodes(OTHER, 1)
    resources = api.pod(name)["spec"]["containers"][0]["resources"]
    assert resources["limits"] == resources["requests"] == {"cpu": "4", "memory": "16Gi"}


def test_list_nodes_filters_by_pool_and_phase(api: FakeKubeAPI, provider: KubernetesProvider) -> None:
    mine = provider.start_nodes(POOL, 3)
    theirs = provider.start_nodes(OTHER, 2)

    assert provider.list_nodes(POOL) == sorted(mine)
    assert provider.list_nodes(OTHER) == sorted(theirs)
    get = api.calls("GET")[0]
    assert get.path == f"/api/v1/namespaces/{NS}/pods"
    assert get.query["labelSelector"] == ["app.kubernetes.io/name=cluster-node,cluster/pool=cpu-pool"]

    api.set_phase(mine[0], "Running")
    api.set_phase(mine[1], "Succeeded")
    api.set_phase(mine[2], "Failed")
    assert provider.list_nodes(POOL) == [mine[0]]


def test_list_nodes_ignores_other_namespaces(api_client: k8s.ApiClient, provider: KubernetesProvider) -> None:
    provider.start_nodes(POOL, 1)
    elsewhere = KubernetesProvider(namespace="elsewhere", api_client=api_client)
    assert elsewhere.list_nodes(POOL) == []


def test_stop_node_deletes_the_pod(api: FakeKubeAPI, provider: KubernetesProvider) -> None:
    a, b = provider.start_nodes(POOL, 2)
    provider.stop_node(POOL, a)

    (delete,) = api.calls("DELETE")
    assert delete.path == f"/api/v1/namespaces/{NS}/pods/{a}"
    assert provider.list_nodes(POOL) == [b]
    # already gone: fine (the API answers 404)
    provider.stop_node(POOL, a)
    assert len(api.calls("DELETE")) == 2
    assert provider.list_nodes(POOL) == [b]


def test_stop_node_refuses_pods_of_other_pools(api: FakeKubeAPI, provider: KubernetesProvider) -> None:
    (theirs,) = provider.start_nodes(OTHER, 1)
    for name in (theirs, "kube-dns-abc", ""):
        with pytest.raises(UsageError, match="is not a node of pool 'cpu-pool'"):
            provider.stop_node(POOL, name)
    assert api.calls("DELETE") == []
    assert provider.list_nodes(OTHER) == [theirs]


def test_forbidden_namespace_is_a_service_error(api: FakeKubeAPI, api_client: k8s.ApiClient) -> None:
    api.forbidden_namespaces.add("locked")
    provider = KubernetesProvider(namespace="locked", api_client=api_client)
    pool = PoolSpec("cpu")
    for call in (
        lambda: provider.start_nodes(pool, 1),
        lambda: provider.list_nodes(pool),
        lambda: provider.stop_node(pool, "node-cpu-0123abcd"),
    ):
        with pytest.raises(ServiceError) as e:
            call()
        text = str(e.value)
        assert "HTTP 403 Forbidden" in text and "'locked'" in text
        assert "cannot" in text and 'resource "pods"' in text  # the API server's own message
        assert "Role" in text  # the hint says what to do
        assert not isinstance(e.value, CredentialsError)
    assert len(api.calls()) == 3


def test_partial_start_failure_names_the_pods_created(api: FakeKubeAPI, provider: KubernetesProvider) -> None:
    class FailSecond(KubernetesProvider):
        count = 0

        def new_pod_name(self, pool: PoolSpec) -> str:
            self.count += 1
            if self.count == 2:
                api.fail_next = (500, "Internal Server Error")
            return super().new_pod_name(pool)

    p = FailSecond(namespace=NS, api_client=provider.api_client)
    with pytest.raises(ServiceError, match=r"HTTP 500") as e:
        p.start_nodes(POOL, 3)
    (created,) = provider.list_nodes(POOL)
    assert f"created so far: {created}" in str(e.value)
    assert "try again" in str(e.value)


def test_unauthorized_is_a_credentials_error(api: FakeKubeAPI, provider: KubernetesProvider) -> None:
    api.fail_next = (401, "Unauthorized")
    with pytest.raises(CredentialsError, match="HTTP 401"):
        provider.list_nodes(POOL)


def test_name_collision_is_retried(api: FakeKubeAPI, provider: KubernetesProvider) -> None:
    (taken,) = provider.start_nodes(POOL, 1)
    suffixes = iter(["", "", "0000beef"])

    class Colliding(KubernetesProvider):
        def new_pod_name(self, pool: PoolSpec) -> str:
            suffix = next(suffixes)
            return f"{pod_prefix(pool.name)}{suffix}" if suffix else taken

    (name,) = Colliding(namespace=NS, api_client=provider.api_client).start_nodes(POOL, 1)
    assert name == "node-cpu-pool-0000beef"
    assert [r.body["metadata"]["name"] for r in api.calls("POST")][1:] == [taken, taken, name]


def test_unreachable_api_is_a_service_error() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    configuration = k8s.Configuration(host=f"http://127.0.0.1:{port}")
    configuration.retries = 0
    client = k8s.ApiClient(configuration)
    try:
        provider = KubernetesProvider(api_client=client)
        with pytest.raises(ServiceError, match=f"cannot reach the Kubernetes API at http://127.0.0.1:{port}"):
            provider.list_nodes(POOL)
    finally:
        client.close()


@pytest.mark.parametrize(
    "pool_name",
    ["GPU_Pool.v2", "a" * 128, "x-" * 40 + "end_", "9lives"],
)
def test_awkward_pool_names_make_valid_pods(api: FakeKubeAPI, provider: KubernetesProvider, pool_name: str) -> None:
    pool = PoolSpec(pool_name)
    names = provider.start_nodes(pool, 2)  # the fake rejects invalid names and labels with 422
    for name in names:
        assert POD_NAME_RE.match(name) and len(name) <= 63, name
        labels = api.pod(name)["metadata"]["labels"]
        assert labels["cluster/pool"] == pool_label(pool_name)
        command = api.pod(name)["spec"]["containers"][0]["command"]
        assert command[command.index("--pool") + 1] == pool_name
    assert provider.list_nodes(pool) == sorted(names)
    provider.stop_node(pool, names[0])
    assert provider.list_nodes(pool) == [names[1]]


def test_invalid_pod_is_a_service_error(api: FakeKubeAPI, provider: KubernetesProvider) -> None:
    class BadName(KubernetesProvider):
        def new_pod_name(self, pool: PoolSpec) -> str:
            return "Not_A_DNS_Name"

    with pytest.raises(ServiceError, match="HTTP 422") as e:
        BadName(namespace=NS, api_client=provider.api_client).start_nodes(POOL, 1)
    assert "RFC 1123" in str(e.value)


def test_custom_command(api: FakeKubeAPI, api_client: k8s.ApiClient) -> None:
    provider = KubernetesProvider(
        namespace=NS, api_client=api_client, command=["python", "-m", "cluster", "worker", "--pool={pool}", "{node}"]
    )
    (name,) = provider.start_nodes(POOL, 1)
    command = api.pod(name)["spec"]["containers"][0]["command"]
    assert command == ["python", "-m", "cluster", "worker", "--pool=cpu-pool", name]


def test_from_kubeconfig(fake: tuple[FakeKubeAPI, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api, url = fake
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": url}}],
                "users": [{"name": "me", "user": {"token": "secret-token"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": NS}}],
                "current-context": "fake",
            }
        )
    )
    with KubernetesProvider.from_kubeconfig(kubeconfig, image="img:1") as provider:
        assert provider.namespace == NS
        (name,) = provider.start_nodes(POOL, 1)
        assert provider.list_nodes(POOL) == [name]
    assert api.pod(name)["spec"]["containers"][0]["image"] == "img:1"
    assert {r.headers.get("authorization") for r in api.calls()} == {"Bearer secret-token"}

    with pytest.raises(ConfigError, match="cannot load the Kubernetes configuration"):
        KubernetesProvider.from_kubeconfig(tmp_path / "missing")
