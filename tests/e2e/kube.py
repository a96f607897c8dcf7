"""Small helpers over the `kubernetes` client for the e2e scenarios: claims, pods, snapshots,
exec, and Prometheus metrics (the driver's exporter through a port-forward of the API server,
the kubelet's as the cluster provider reaches it)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.release import NAMESPACE
from tests.e2e.steps import wait_for

MiB = 1 << 20
SNAPSHOT_GROUP, SNAPSHOT_VERSION = "snapshot.storage.k8s.io", "v1"
# A pod's command: 8 MiB of random data and its checksum, on disk, for a later pod to check.
WRITE_AND_SUM = "dd if=/dev/urandom of=/data/blob bs=1M count=8 && sha256sum /data/blob > /data/sum && sync"


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse_metrics(text: str) -> list[Sample]:
    return [
        Sample(s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def quantity_bytes(quantity: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "k": 10**3, "M": 10**6, "G": 10**9}
    match = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity)
    assert match, quantity
    return int(match.group(1)) * units.get(match.group(2), 1)


class Kube:
    """One test's view of the cluster: its own namespace, cleaned up afterwards."""

    def __init__(self, api: Any, namespace: str, pod_image: str) -> None:
        from kubernetes import client

        self.api = api
        self.namespace = namespace
        self.pod_image = pod_image
        # Typed as Any: the generated models make every field Optional, which says nothing
        # useful about a live object the test just waited for.
        self.core: Any = client.CoreV1Api(api)
        self.storage: Any = client.StorageV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)

    # --- objects ------------------------------------------------------------------------------

    def create_namespace(self) -> None:
        self.core.create_namespace({"metadata": {"name": self.namespace}})

    def delete_namespace(self) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.delete_namespace(self.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
        # Wait until its pods, claims and volumes are gone: the next scenario measures the pool.
        wait_for(f"namespace {self.namespace} deleted", lambda: not self._namespace_exists(), 300)
        wait_for(f"the volumes of {self.namespace} deleted", lambda: not self._own_volumes(), 300)

    def _own_volumes(self) -> list[str]:
        volumes = self.core.list_persistent_volume().items
        return [
            v.metadata.name
            for v in volumes
            if v.spec.claim_ref and v.spec.claim_ref.namespace == self.namespace
        ]

    def _namespace_exists(self) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core.read_namespace(self.namespace)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def pvc(
        self,
        name: str,
        size: str,
        data_source: dict[str, str] | None = None,
        access_mode: str = "ReadWriteOnce",
        attributes_class: str | None = None,
    ) -> None:
        spec: dict[str, Any] = {
            "accessModes": [access_mode],
            "storageClassName": "btrfs",
            "resources": {"requests": {"storage": size}},
        }
        if data_source:
            spec["dataSource"] = data_source
        if attributes_class:
            spec["volumeAttributesClassName"] = attributes_class
        self.core.create_namespaced_persistent_volume_claim(
            self.namespace, {"metadata": {"name": name}, "spec": spec}
        )

    def pod(
        self,
        name: str,
        claim: str,
        script: str = "sleep 3600",
        node: str | None = None,
        security_context: dict[str, Any] | None = None,
    ) -> None:
        """A pod mounting `claim` at /data, running `script` in the test image (already on every
        node, so the test needs no registry)."""
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "app",
                    "image": self.pod_image,
                    "imagePullPolicy": "Never",
                    "command": ["/bin/sh", "-c", script],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
        }
        if node:
            spec["nodeSelector"] = {"kubernetes.io/hostname": node}
        if security_context:
            spec["securityContext"] = security_context
        self.core.create_namespaced_pod(self.namespace, {"metadata": {"name": name}, "spec": spec})

    def delete_pod(self, name: str) -> None:
        self.core.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0)
        wait_for(f"pod {name} gone", lambda: not self._exists(self.core.read_namespaced_pod, name), 120)

    def delete_pvc(self, name: str) -> None:
        self.core.delete_namespaced_persistent_volume_claim(name, self.namespace)

    def _exists(self, reader: Any, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            reader(name, self.namespace)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def wait_running(self, name: str, timeout: float = 300) -> Any:
        def running() -> Any:
            pod = self.core.read_namespaced_pod(name, self.namespace)
            if pod.status.phase == "Failed":
                raise AssertionError(f"pod {name} failed: {self.logs(name)}")
            return pod if pod.status.phase == "Running" else None

        return wait_for(f"pod {name} running", running, timeout)

    def wait_finished(self, name: str, timeout: float = 300) -> str:
        def finished() -> str | None:
            phase = self.core.read_namespaced_pod(name, self.namespace).status.phase
            return phase if phase in ("Succeeded", "Failed") else None

        phase: str = wait_for(f"pod {name} finished", finished, timeout)
        return phase

    def node_of(self, pod: str) -> str:
        return str(self.core.read_namespaced_pod(pod, self.namespace).spec.node_name)

    def logs(self, name: str) -> str:
        text: str = self.core.read_namespaced_pod_log(name, self.namespace)
        return text

    def exec(self, pod: str, script: str) -> tuple[int, str]:
        """Run `script` in the pod; returns (exit code, combined output)."""
        from kubernetes.stream import stream

        marker = f"__rc_{uuid.uuid4().hex}="
        output: str = stream(
            self.core.connect_get_namespaced_pod_exec,
            pod,
            self.namespace,
            command=["/bin/sh", "-c", f"{script}; echo {marker}$?"],
            stderr=True,
            stdout=True,
            stdin=False,
            tty=False,
            _preload_content=True,
        )
        head, _, rc = output.rpartition(marker)
        return int(rc.strip() or "255"), head

    def wait_bound(self, claim: str, timeout: float = 300) -> Any:
        def bound() -> Any:
            pvc = self.core.read_namespaced_persistent_volume_claim(claim, self.namespace)
            return pvc if pvc.status.phase == "Bound" else None

        return wait_for(f"claim {claim} bound", bound, timeout)

    def pv_of(self, claim: str) -> Any:
        pvc = self.wait_bound(claim)
        return self.core.read_persistent_volume(pvc.spec.volume_name)

    def snapshot(self, name: str, claim: str) -> None:
        body = {
            "apiVersion": f"{SNAPSHOT_GROUP}/{SNAPSHOT_VERSION}",
            "kind": "VolumeSnapshot",
            "metadata": {"name": name},
            "spec": {"volumeSnapshotClassName": "btrfs", "source": {"persistentVolumeClaimName": claim}},
        }
        self.custom.create_namespaced_custom_object(
            SNAPSHOT_GROUP, SNAPSHOT_VERSION, self.namespace, "volumesnapshots", body
        )

    def wait_snapshot_ready(self, name: str, timeout: float = 300) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            snap: dict[str, Any] = self.custom.get_namespaced_custom_object(
                SNAPSHOT_GROUP, SNAPSHOT_VERSION, self.namespace, "volumesnapshots", name
            )
            status = snap.get("status") or {}
            if status.get("error"):
                raise AssertionError(f"snapshot {name}: {status['error']}")
            return snap if status.get("readyToUse") else None

        return wait_for(f"snapshot {name} ready", ready, timeout)

    # --- metrics ------------------------------------------------------------------------------

    def node_plugin_pod(self, node: str) -> Any:
        pods = self.core.list_namespaced_pod(
            NAMESPACE,
            label_selector="app.kubernetes.io/component=node",
            field_selector=f"spec.nodeName={node}",
        ).items
        running = [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]
        assert len(running) == 1, f"expected one running node plugin pod on {node}, found {len(running)}"
        return running[0]

    def driver_metrics(self, node: str, port: int = 9842) -> list[Sample]:
        """The driver's /metrics through a port-forward of its pod (the API server's pod proxy
        refuses loopback pod addresses, which host-network pods have on the local cluster)."""
        from kubernetes.stream import portforward

        name = self.node_plugin_pod(node).metadata.name
        forward = portforward(
            self.core.connect_get_namespaced_pod_portforward, name, NAMESPACE, ports=str(port)
        )
        sock = forward.socket(port)
        sock.setblocking(True)
        try:
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            response = b""
            while chunk := sock.recv(1 << 16):
                response += chunk
        finally:
            sock.close()
        head, _, body = response.partition(b"\r\n\r\n")
        assert head.split(b"\r\n", 1)[0].split()[1] == b"200", head
        return parse_metrics(body.decode())


def find_sample(samples: list[Sample], name: str, **labels: str) -> Sample | None:
    for sample in samples:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return sample
    return None
