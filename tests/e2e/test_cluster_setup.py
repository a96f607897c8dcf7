"""Offline checks of the e2e cluster plumbing (these run everywhere; the scenarios need kind)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.kind_cluster import (
    EXTERNAL_SNAPSHOTTER,
    POOL_IN_NODE,
    SNAPSHOT_CONTROLLER_URLS,
    SNAPSHOT_CRD_URLS,
    Cluster,
    distributed_snapshot_controller,
)


def test_kind_config_hands_each_worker_its_host_pool(tmp_path: Path) -> None:
    cluster = Cluster(name="t", workdir=tmp_path)
    config = cluster.kind_config()
    assert config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    roles = [n["role"] for n in config["nodes"]]
    assert roles == ["control-plane", "worker", "worker"]
    host_paths = []
    for node in config["nodes"][1:]:
        (mount,) = node["extraMounts"]
        assert mount["containerPath"] == POOL_IN_NODE
        assert mount["propagation"] == "HostToContainer"
        host_paths.append(mount["hostPath"])
    assert len(set(host_paths)) == 2, "each worker has its own pool"
    assert cluster.worker_names() == ["t-worker", "t-worker2"]


def test_chart_values_use_the_loaded_image_and_existing_pool(tmp_path: Path) -> None:
    values = Cluster(name="t", workdir=tmp_path).chart_values()
    assert values["image"] == {"repository": "btrfs-csi", "tag": "e2e", "pullPolicy": "Never"}
    assert values["pool"] == {"mode": "existing", "path": POOL_IN_NODE}


def test_upstream_manifests_are_pinned() -> None:
    for url in SNAPSHOT_CRD_URLS + SNAPSHOT_CONTROLLER_URLS:
        assert f"/external-snapshotter/{EXTERNAL_SNAPSHOTTER}/" in url


def test_snapshot_controller_is_switched_to_distributed_mode() -> None:
    upstream: list[dict[str, Any]] = [
        {"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {"name": "snapshot-controller"}},
        {
            "kind": "ClusterRole",
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": {"name": "snapshot-controller-runner"},
            "rules": [{"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get"]}],
        },
        {
            "kind": "RoleBinding",
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "metadata": {"name": "snapshot-controller-leaderelection", "namespace": "default"},
            "subjects": [{"kind": "ServiceAccount", "name": "snapshot-controller", "namespace": "default"}],
            "roleRef": {"kind": "Role", "name": "snapshot-controller-leaderelection"},
        },
        {
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "metadata": {"name": "snapshot-controller", "namespace": "default"},
            "spec": {
                "replicas": 2,
                "template": {"spec": {"containers": [{"name": "snapshot-controller", "args": ["--v=5"]}]}},
            },
        },
    ]
    patched = distributed_snapshot_controller(upstream)
    by_kind = {d["kind"]: d for d in patched}
    assert {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]} in by_kind[
        "ClusterRole"
    ]["rules"]
    assert "namespace" not in by_kind["ClusterRole"]["metadata"]
    for kind in ("ServiceAccount", "RoleBinding", "Deployment"):
        assert by_kind[kind]["metadata"]["namespace"] == "kube-system"
    assert by_kind["RoleBinding"]["subjects"][0]["namespace"] == "kube-system"
    (container,) = by_kind["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["--v=5", "--enable-distributed-snapshotting"]
    assert upstream[3]["spec"]["replicas"] == 2, "the input is not modified"
