"""Who the peers are: node ID -> HOST:PORT of its peer service, from a static list (--peers static:...)
or from the Kubernetes API (--peers kubernetes: the pods of this node plugin's DaemonSet, each on its
host address, all serving the peer port this node serves)."""

import logging
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger("csi.peer")

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
POD_NAME_ENV = "POD_NAME"  # the downward API's metadata.name, set by the chart
API_TIMEOUT_SECONDS = 10.0
# A known node's address changes only when its pod is replaced; a node not in the list may just have
# joined, so a miss refreshes sooner (but not on every call a stranger makes).
REFRESH_SECONDS = 60.0
MISS_REFRESH_SECONDS = 5.0


class PeerSetupError(Exception):
    """The peer directory cannot be built; the message is one line naming the flag or setting."""


class PeerDirectory(Protocol):
    def addresses(self) -> Mapping[str, str]:
        """Every node of the installation this one knows of, node ID -> HOST:PORT."""
        ...

    def knows(self, node: str) -> bool:
        """Whether `node` is a node of this installation (a certificate naming it may talk to us)."""
        ...


class StaticPeers:
    def __init__(self, nodes: Mapping[str, str]) -> None:
        self._nodes = dict(nodes)

    def addresses(self) -> Mapping[str, str]:
        return self._nodes

    def knows(self, node: str) -> bool:
        return node in self._nodes


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class KubernetesPeers:
    """The DaemonSet's pods through a CoreV1Api (or anything with its two methods: tests pass a fake)."""

    def __init__(self, api: Any, namespace: str, pod_name: str, port: int) -> None:
        self._api = api
        self._namespace = namespace
        self._pod_name = pod_name
        self._port = port
        self._lock = threading.Lock()
        self._nodes: dict[str, str] = {}
        self._listed_at: float | None = None

    def addresses(self) -> Mapping[str, str]:
        return self._refreshed(REFRESH_SECONDS)

    def knows(self, node: str) -> bool:
        return node in self._refreshed(REFRESH_SECONDS) or node in self._refreshed(MISS_REFRESH_SECONDS)

    def _refreshed(self, max_age: float) -> Mapping[str, str]:
        with self._lock:
            now = time.monotonic()
            if self._listed_at is None or now - self._listed_at >= max_age:
                self._listed_at = now
                try:
                    self._nodes = self._list()
                except Exception as exc:  # the API server away: keep the last list, say so
                    log.warning(
                        "peer list failed", extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}}
                    )
            return dict(self._nodes)

    def _list(self) -> dict[str, str]:
        own = self._api.read_namespaced_pod(
            self._pod_name, self._namespace, _request_timeout=API_TIMEOUT_SECONDS
        )
        owner = _daemonset_uid(own)
        if owner is None:
            raise PeerSetupError(f"pod {self._namespace}/{self._pod_name} belongs to no DaemonSet")
        pods = self._api.list_namespaced_pod(self._namespace, _request_timeout=API_TIMEOUT_SECONDS).items
        nodes = {}
        for pod in pods:
            node, ip = pod.spec.node_name, pod.status.host_ip
            if _daemonset_uid(pod) == owner and node and ip:
                nodes[node] = host_port(ip, self._port)
        return nodes


def _daemonset_uid(pod: Any) -> str | None:
    for ref in pod.metadata.owner_references or ():
        if ref.kind == "DaemonSet" and ref.controller:
            return str(ref.uid)
    return None


def kubernetes_peers(port: int) -> KubernetesPeers:
    """The directory for --peers kubernetes, from the in-cluster service account and $POD_NAME."""
    pod_name = os.environ.get(POD_NAME_ENV, "")
    if not pod_name:
        raise PeerSetupError(
            f"--peers kubernetes: ${POD_NAME_ENV} is not set (the downward API's metadata.name)"
        )
    try:
        namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
    except OSError as exc:
        raise PeerSetupError(
            f"--peers kubernetes: cannot read {SERVICE_ACCOUNT_NAMESPACE}: {exc.strerror}"
        ) from None
    from kubernetes import client, config  # only this mode needs the client; imported when chosen

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException as exc:
        raise PeerSetupError(f"--peers kubernetes: {exc}") from None
    return KubernetesPeers(client.CoreV1Api(), namespace, pod_name, port)
