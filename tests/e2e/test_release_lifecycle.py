"""The release's life on a real cluster (providers.py): a helm upgrade keeps volumes and their data,
an uninstall leaves no object of the release behind, and a reinstall brings the driver back. Collected
after test_e2e.py's scenarios, which need the release installed throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.kube import SNAPSHOT_GROUP, SNAPSHOT_VERSION, WRITE_AND_SUM, Kube
from tests.e2e.providers import Provider
from tests.e2e.release import DRIVER_NAME, NAMESPACE, RELEASE
from tests.e2e.steps import wait_for

pytestmark = pytest.mark.e2e


def release_objects(kube: Kube) -> list[str]:
    """Every object of the release still in the cluster (namespaced and cluster-wide)."""
    selector = f"app.kubernetes.io/instance={RELEASE}"
    from kubernetes import client

    rbac: Any = client.RbacAuthorizationV1Api(kube.api)
    apps: Any = client.AppsV1Api(kube.api)
    listers: dict[str, Callable[[], Any]] = {
        "DaemonSet": lambda: apps.list_namespaced_daemon_set(NAMESPACE, label_selector=selector),
        "Deployment": lambda: apps.list_namespaced_deployment(NAMESPACE, label_selector=selector),
        "Pod": lambda: kube.core.list_namespaced_pod(NAMESPACE, label_selector=selector),
        "ServiceAccount": lambda: kube.core.list_namespaced_service_account(
            NAMESPACE, label_selector=selector
        ),
        "ClusterRole": lambda: rbac.list_cluster_role(label_selector=selector),
        "ClusterRoleBinding": lambda: rbac.list_cluster_role_binding(label_selector=selector),
        "Role": lambda: rbac.list_namespaced_role(NAMESPACE, label_selector=selector),
        "RoleBinding": lambda: rbac.list_namespaced_role_binding(NAMESPACE, label_selector=selector),
        "CSIDriver": lambda: kube.storage.list_csi_driver(label_selector=selector),
        "StorageClass": lambda: kube.storage.list_storage_class(label_selector=selector),
        "CSIStorageCapacity": lambda: kube.storage.list_namespaced_csi_storage_capacity(NAMESPACE),
    }
    found = []
    for kind, lister in listers.items():
        items: Any = lister()
        found += [f"{kind}/{o.metadata.name}" for o in items.items]
    classes = kube.custom.list_cluster_custom_object(
        SNAPSHOT_GROUP, SNAPSHOT_VERSION, "volumesnapshotclasses"
    )
    return found + [f"VolumeSnapshotClass/{c['metadata']['name']}" for c in classes["items"]]


def test_11_helm_upgrade_keeps_volumes_and_uninstall_leaves_nothing(cluster: Provider, kube: Kube) -> None:
    kube.pvc("lasting", "32Mi")
    kube.pod("writer", "lasting", WRITE_AND_SUM)
    assert kube.wait_finished("writer") == "Succeeded", kube.logs("writer")
    node = kube.node_of("writer")
    old = kube.node_plugin_pod(node).metadata.uid

    values = {**cluster.chart_values(), "logLevel": "debug"}
    release = cluster.helm("upgrade", values)
    assert release["status"] == "deployed", release
    wait_for(
        "node plugin replaced by the upgrade", lambda: kube.node_plugin_pod(node).metadata.uid != old, 300
    )
    kube.pod("reader", "lasting", "sha256sum -c /data/sum", node=node)
    assert kube.wait_finished("reader") == "Succeeded", kube.logs("reader")

    # Claims go before the driver (their PVs need it to be deleted), then the release.
    kube.delete_pod("reader")
    kube.delete_pod("writer")
    kube.delete_pvc("lasting")
    wait_for("no btrfs PVs left", lambda: not [
        p for p in kube.core.list_persistent_volume().items if p.spec.csi and p.spec.csi.driver == DRIVER_NAME
    ], 180)  # fmt: skip
    cluster.helm("uninstall")
    wait_for("no object of the release left", lambda: release_objects(kube) == [], 180)
    # Put it back, so the cluster stays usable (`make e2e-up` users, reruns).
    cluster.helm("install")
    wait_for("node plugin back", lambda: kube.node_plugin_pod(node), 300)
