"""A node provider that runs each node as one Kubernetes pod.

Every node of pool ``<pool>`` is a pod named ``node-<pool>-<8 hex>`` (the pool name lowercased and made
DNS-safe) in one namespace, labelled ``app.kubernetes.io/name=cluster-node`` and ``cluster/pool=<pool>``.
Its single container runs ``cluster worker --pool <pool> --node-name <pod name>``, reads the cluster
configuration from ``CLUSTER_CONFIG=/etc/cluster/config.json`` (key ``config.json`` of a Secret mounted
read-only at ``/etc/cluster``), and gets the pool's node size as CPU/memory requests and limits. Pods use
``restartPolicy: Never``: a node that exits is finished, and the controller starts a new one if needed.

Create the Secret once from a working config file::

    kubectl create secret generic cluster-config --from-file=config.json=.cluster/config.json

The service account (or kubeconfig user) needs ``create``, ``get``, ``list`` and ``delete`` on ``pods``
in the namespace. Needs the ``kubernetes`` package (``pip install 'cluster[kubernetes]'``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

try:
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the Kubernetes provider needs the 'kubernetes' Python package, which is not installed: "
        "pip install 'cluster[kubernetes]'"
    ) from e
from urllib3.exceptions import HTTPError as Urllib3HTTPError

from cluster.autoscale import PoolSpec
from cluster.errors import ConfigError, CredentialsError, ServiceError, UsageError
from cluster.sizes import get_size

APP_LABEL = "app.kubernetes.io/name"
APP_VALUE = "cluster-node"
POOL_LABEL = "cluster/pool"
POOL_ANNOTATION = "cluster/pool-name"
CONFIG_MOUNT = "/etc/cluster"
CONFIG_KEY = "config.json"
NODE_CONFIG_KEY = "node-config.json"  # in the config Secret: the Redis user `node`, the object store's node user
CONFIG_PATH = f"{CONFIG_MOUNT}/{CONFIG_KEY}"
#: The default container command; ``{pool}`` and ``{node}`` are replaced in every element.
NODE_UID = 1000  # the image's `cluster` user

DEFAULT_COMMAND = ("cluster", "worker", "--managed", "--pool", "{pool}", "--node-name", "{node}")
#: Pods in these phases have exited for good; they are no longer nodes.
FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)$")
_POD_PREFIX_MAX = 63 - len("node-") - len("-") - 8  # pod names stay valid DNS labels (hostnames)


def pod_prefix(pool: str) -> str:
    """``node-<pool>-``: the pool name lowercased, non-[a-z0-9-] runs turned into '-', cut to fit 63 chars."""
    safe = re.sub(r"[^a-z0-9-]+", "-", pool.lower())
    safe = re.sub(r"-{2,}", "-", safe).strip("-")[:_POD_PREFIX_MAX].strip("-") or "pool"
    return f"node-{safe}-"


def pool_label(pool: str) -> str:
    """The ``cluster/pool`` label value: the pool name when it is a valid label value, else a hashed form."""
    if _LABEL_VALUE_RE.fullmatch(pool):
        return pool
    digest = hashlib.sha256(pool.encode()).hexdigest()[:10]
    return f"{pool[:52].rstrip('._-')}-{digest}"


def _quantity(memory_bytes: int) -> str:
    """A Kubernetes memory quantity: ``2Gi`` / ``512Mi`` when exact, else plain bytes."""
    for unit, factor in (("Gi", 1024**3), ("Mi", 1024**2)):
        if memory_bytes % factor == 0:
            return f"{memory_bytes // factor}{unit}"
    return str(memory_bytes)


class KubernetesProvider:
    """Starts, lists and stops a pool's nodes as pods through the Kubernetes API (CoreV1).

    ``api_client`` defaults to a client with the ``kubernetes`` package's default configuration (set it
    with :meth:`from_kubeconfig` instead). ``command`` replaces :data:`DEFAULT_COMMAND`; ``{pool}`` and
    ``{node}`` in its elements become the pool and pod names.
    """

    name = "kubernetes"

    def __init__(
        self,
        namespace: str = "default",
        image: str = "cluster:latest",
        config_secret: str = "cluster-config",
        api_client: k8s.ApiClient | None = None,
        command: list[str] | None = None,
        *,
        request_timeout: float = 30.0,
        config_key: str = NODE_CONFIG_KEY,
    ) -> None:
        if not namespace or not image or not config_secret:
            raise UsageError("the Kubernetes provider needs a namespace, an image and a config secret name")
        if command is not None and (not command or not all(isinstance(c, str) for c in command)):
            raise UsageError(f"command must be a non-empty list of strings, got {command!r}")
        self.namespace = namespace
        self.image = image
        self.config_secret = config_secret
        self.config_key = config_key  # the Secret's key holding the *node's* config (node credentials only)
        self.command: tuple[str, ...] = tuple(command) if command is not None else DEFAULT_COMMAND
        self.request_timeout = request_timeout
        self._owns_client = api_client is None
        self.api_client = api_client if api_client is not None else k8s.ApiClient()
        self.core = k8s.CoreV1Api(self.api_client)

    # ---- construction from configuration ----------------------------------------------------------

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str] | None = None, *, context: str | None = None, **kw: Any
    ) -> KubernetesProvider:
        """A provider using a kubeconfig file (``path``, else ``$KUBECONFIG``/``~/.kube/config``).

        With no ``path`` inside a pod (``KUBERNETES_SERVICE_HOST`` set), uses the pod's service account
        instead. The namespace defaults to the kubeconfig context's (or the service account's) namespace.
        """
        if path is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls.from_in_cluster(**kw)
        configuration = k8s.Configuration()
        config_file = os.fspath(path) if path is not None else None
        where = config_file or os.environ.get("KUBECONFIG") or "~/.kube/config"
        try:
            k8s_config.load_kube_config(
                config_file=config_file, context=context, client_configuration=configuration, persist_config=False
            )
            if "namespace" not in kw:
                contexts, active = k8s_config.list_kube_config_contexts(config_file=config_file)
                chosen = next((c for c in contexts if c.get("name") == context), active) if context else active
                namespace = ((chosen or {}).get("context") or {}).get("namespace")
                if namespace:
                    kw["namespace"] = namespace
        except (ConfigException, OSError, ValueError, TypeError) as e:
            raise ConfigError(
                f"cannot load the Kubernetes configuration from {where}: {e}",
                hint="pass the path of a working kubeconfig (kubectl get pods should work with it)",
            ) from e
        return cls(api_client=k8s.ApiClient(configuration), **kw)

    @classmethod
    def from_in_cluster(cls, **kw: Any) -> KubernetesProvider:
        """A provider using the service account of the pod this runs in (the controller's own pod)."""
        configuration = k8s.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
        except ConfigException as e:
            raise ConfigError(
                f"cannot load the in-cluster Kubernetes configuration: {e}",
                hint="run inside a pod with a service account, or use from_kubeconfig(path)",
            ) from e
        if "namespace" not in kw:
            with contextlib.suppress(OSError):
                kw["namespace"] = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
        return cls(api_client=k8s.ApiClient(configuration), **kw)

    # ---- the Provider interface ---------------------------------------------------------------------

    def start_nodes(self, pool: PoolSpec, count: int) -> list[str]:
        """Create ``count`` pods for ``pool``; returns their names (= the node names)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise UsageError(f"count must be a whole number >= 0, got {count!r}")
        created: list[str] = []
        for _ in range(count):
            created.append(self._create_pod(pool, created))
        return created

    def list_nodes(self, pool: PoolSpec) -> list[str]:
        """Names of the pool's pods that have not finished (phase not Succeeded/Failed), sorted."""
        try:
            pods = self.core.list_namespaced_pod(
                self.namespace, label_selector=self.label_selector(pool), _request_timeout=self.request_timeout
            )
        except (ApiException, Urllib3HTTPError, OSError) as e:
            raise self._error(f"list the pods of pool {pool.name!r}", e) from e
        names: list[str] = []
        for pod in pods.items or []:
            if pod.metadata is None or not pod.metadata.name:
                continue
            if pod.status is None or pod.status.phase not in FINISHED_PHASES:
                names.append(pod.metadata.name)
        return sorted(names)

    def stop_node(self, pool: PoolSpec, node: str, *, force: bool = False) -> None:
        """Delete the node's pod (``force``: with no grace period); a pod that is already gone is fine."""
        if not isinstance(node, str) or not node.startswith(pod_prefix(pool.name)):
            raise UsageError(
                f"{node!r} is not a node of pool {pool.name!r}",
                hint=f"node pods of this pool are named {pod_prefix(pool.name)}<8 hex digits>",
            )
        try:
            self.core.delete_namespaced_pod(node, self.namespace, _request_timeout=self.request_timeout,
                                            grace_period_seconds=0 if force else None)
        except ApiException as e:
            if e.status == 404:
                return
            raise self._error(f"delete pod {node!r}", e) from e
        except (Urllib3HTTPError, OSError) as e:
            raise self._error(f"delete pod {node!r}", e) from e

    # ---- pods ---------------------------------------------------------------------------------------

    def label_selector(self, pool: PoolSpec) -> str:
        """The label selector matching exactly the pods of ``pool``."""
        return f"{APP_LABEL}={APP_VALUE},{POOL_LABEL}={pool_label(pool.name)}"

    def new_pod_name(self, pool: PoolSpec) -> str:
        return f"{pod_prefix(pool.name)}{secrets.token_hex(4)}"

    def pod_manifest(self, pool: PoolSpec, pod_name: str) -> k8s.V1Pod:
        """The pod that runs node ``pod_name`` of ``pool``."""
        size = get_size(pool.vm_size)
        resources = {"cpu": str(size.cpus), "memory": _quantity(size.memory_bytes)}
        command = [c.replace("{pool}", pool.name).replace("{node}", pod_name) for c in self.command]
        if self.command == DEFAULT_COMMAND:
            command += pool.node_args("required")  # pods run other people's code: no isolation, no run
        container = k8s.V1Container(
            name="node",
            image=self.image,
            command=command,
            env=[
                k8s.V1EnvVar(name="CLUSTER_CONFIG", value=CONFIG_PATH),
                k8s.V1EnvVar(name="CLUSTER_POOL", value=pool.name),
                k8s.V1EnvVar(name="CLUSTER_NODE_NAME", value=pod_name),
            ],
            resources=k8s.V1ResourceRequirements(requests=dict(resources), limits=dict(resources)),
            volume_mounts=[k8s.V1VolumeMount(name="cluster-config", mount_path=CONFIG_MOUNT, read_only=True)],
            # non-root, no privilege escalation, no capabilities; runs are sandboxed with bwrap inside
            # (user namespaces: see docs/security.md for what the runtime must allow)
            security_context=k8s.V1SecurityContext(
                run_as_non_root=True, run_as_user=NODE_UID, run_as_group=NODE_UID,
                allow_privilege_escalation=False, capabilities=k8s.V1Capabilities(drop=["ALL"]),
                seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault")),
        )
        return k8s.V1Pod(
            api_version="v1",
            kind="Pod",
            metadata=k8s.V1ObjectMeta(
                name=pod_name,
                namespace=self.namespace,
                labels={APP_LABEL: APP_VALUE, POOL_LABEL: pool_label(pool.name)},
                annotations={POOL_ANNOTATION: pool.name},
            ),
            spec=k8s.V1PodSpec(
                containers=[container],
                restart_policy="Never",
                security_context=k8s.V1PodSecurityContext(fs_group=NODE_UID),
                volumes=[
                    k8s.V1Volume(
                        name="cluster-config",
                        secret=k8s.V1SecretVolumeSource(
                            secret_name=self.config_secret,
                            items=[k8s.V1KeyToPath(key=self.config_key, path=CONFIG_KEY)],
                            # owner root, group fs_group: readable by the node's uid only (0400 would leave
                            # it to root alone), never world-readable
                            default_mode=0o440,
                        ),
                    )
                ],
            ),
        )

    def _create_pod(self, pool: PoolSpec, created: Sequence[str]) -> str:
        so_far = f" (created so far: {', '.join(created)})" if created else ""
        for attempt in range(3):
            pod_name = self.new_pod_name(pool)
            try:
                self.core.create_namespaced_pod(
                    self.namespace, self.pod_manifest(pool, pod_name), _request_timeout=self.request_timeout
                )
                return pod_name
            except ApiException as e:
                if e.status == 409 and attempt < 2:  # a random name collided: pick another
                    continue
                raise self._error(f"create a node pod for pool {pool.name!r}{so_far}", e) from e
            except (Urllib3HTTPError, OSError) as e:
                raise self._error(f"create a node pod for pool {pool.name!r}{so_far}", e) from e
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- errors and lifetime ----------------------------------------------------------------------

    def _error(self, action: str, e: Exception) -> ServiceError:
        host = self.api_client.configuration.host
        if not isinstance(e, ApiException) or not e.status:
            return ServiceError(
                f"cannot reach the Kubernetes API at {host} to {action}: {e}",
                hint="check that the cluster is up and the kubeconfig's server address is reachable from here",
            )
        detail = _status_message(e.body) or (e.reason or "")
        status = f"HTTP {e.status} {e.reason}" if e.reason else f"HTTP {e.status}"
        message = f"the Kubernetes API at {host} refused to {action} in namespace {self.namespace!r}: {status}"
        if detail and detail != e.reason:
            message += f": {detail}"
        if e.status == 401:
            return CredentialsError(message, hint="the credentials in the kubeconfig/service account were rejected")
        hints = {
            403: f"grant the service account create/get/list/delete on pods in namespace {self.namespace!r} "
            "(a Role and RoleBinding)",
            404: f"check that namespace {self.namespace!r} exists (kubectl get namespace {self.namespace})",
            409: "a pod with that name already exists; try again",
            422: "the API server rejected the pod; check the image, the config secret name and the pool's node size",
        }
        hint = hints.get(e.status, "the API server had a problem; try again" if e.status >= 500 else None)
        return ServiceError(message, hint=hint)

    def close(self) -> None:
        """Close the API client if this provider created it."""
        if self._owns_client:
            self.api_client.close()

    def __enter__(self) -> KubernetesProvider:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"KubernetesProvider(namespace={self.namespace!r}, image={self.image!r})"


def _status_message(body: Any) -> str | None:
    """The ``message`` of a Kubernetes ``Status`` error body, if the body is one."""
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return body.strip()[:200] or None
    message = data.get("message") if isinstance(data, dict) else None
    return message if isinstance(message, str) else None


__all__ = [
    "APP_LABEL",
    "APP_VALUE",
    "CONFIG_PATH",
    "DEFAULT_COMMAND",
    "POOL_LABEL",
    "KubernetesProvider",
    "pod_prefix",
    "pool_label",
]
