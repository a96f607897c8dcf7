"""End to end on a kind cluster with real btrfs pools (see cluster.py): provisioning, usage seen by
the kubelet and by the driver's exporter, quota enforcement, snapshot/restore, clone, online
expansion, deletion, node pinning and capacity tracking.

Run with tests/e2e/run.sh. Snapshots and clones are restored on the node that holds the source
(the consumer pod is pinned there): a subvolume snapshot cannot leave its pool.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.e2e.cluster import DRIVER_IMAGE, DRIVER_NAME, NAMESPACE, TOPOLOGY_KEY, Cluster, wait_for
from tests.e2e.kube import Kube, MiB, find_sample, quantity_bytes

pytestmark = pytest.mark.e2e

WRITE_AND_SUM = "dd if=/dev/urandom of=/data/blob bs=1M count=8 && sha256sum /data/blob > /data/sum && sync"


def test_capacity_is_published_per_node(cluster: Cluster, kube: Kube) -> None:
    def capacities() -> dict[str, int] | None:
        items = kube.storage.list_namespaced_csi_storage_capacity(NAMESPACE).items
        found = {}
        for item in items:
            labels = (item.node_topology.match_labels or {}) if item.node_topology else {}
            if item.storage_class_name == "btrfs" and TOPOLOGY_KEY in labels and item.capacity:
                assert [o.kind for o in item.metadata.owner_references or []] == ["DaemonSet"]
                found[labels[TOPOLOGY_KEY]] = quantity_bytes(item.capacity)
        return found if set(found) >= set(cluster.worker_names()) else None

    found = wait_for("CSIStorageCapacity for every worker", capacities, 180)
    assert all(size > 1 << 30 for size in found.values()), found


def test_written_data_shows_in_kubelet_and_driver_metrics(kube: Kube) -> None:
    kube.pvc("data", "64Mi")
    kube.pod("writer", "data", "dd if=/dev/urandom of=/data/blob bs=1M count=20 && sync && sleep 3600")
    node = kube.wait_running("writer").spec.node_name
    labels = {"namespace": kube.namespace, "persistentvolumeclaim": "data"}

    def kubelet_used() -> float | None:
        samples = kube.kubelet_metrics(node)
        used = find_sample(samples, "kubelet_volume_stats_used_bytes", **labels)
        return used.value if used and used.value >= 20 * MiB else None

    # The kubelet refreshes volume stats once a minute.
    assert wait_for("kubelet_volume_stats_used_bytes >= 20Mi", kubelet_used, 240) >= 20 * MiB
    capacity = find_sample(kube.kubelet_metrics(node), "kubelet_volume_stats_capacity_bytes", **labels)
    assert capacity is not None and capacity.value == 64 * MiB, "stats report the qgroup limit, not the pool"

    pvc_labels = {"pvc_namespace": kube.namespace, "pvc_name": "data"}

    def exported() -> tuple[float, float] | None:
        samples = kube.driver_metrics(node)
        used = find_sample(samples, "btrfs_csi_volume_referenced_bytes", **pvc_labels)
        limit = find_sample(samples, "btrfs_csi_volume_limit_bytes", **pvc_labels)
        if used is None or limit is None or used.value < 20 * MiB:
            return None
        return used.value, limit.value

    used, limit = wait_for("btrfs_csi_volume_referenced_bytes >= 20Mi", exported, 120)
    assert limit == 64 * MiB
    assert used <= limit


def test_quota_stops_writes_past_the_size(kube: Kube) -> None:
    kube.pvc("small", "32Mi")
    script = (
        'dd if=/dev/zero of=/data/fill bs=1M count=64 2>&1; echo "dd-exit=$?"; sync; '
        'stat -c "size=%s" /data/fill'
    )
    kube.pod("filler", "small", script)
    assert kube.wait_finished("filler") == "Succeeded"
    out = kube.logs("filler")
    assert "Disk quota exceeded" in out, out
    assert "dd-exit=0" not in out, out
    size = int(out.rsplit("size=", 1)[1].split()[0])
    assert 16 * MiB < size <= 32 * MiB, out


def test_snapshot_restores_the_data_as_it_was(kube: Kube) -> None:
    kube.pvc("source", "64Mi")
    kube.pod("writer", "source", WRITE_AND_SUM)
    assert kube.wait_finished("writer") == "Succeeded", kube.logs("writer")
    node = kube.core.read_namespaced_pod("writer", kube.namespace).spec.node_name

    kube.snapshot("snap", "source")
    snap = kube.wait_snapshot_ready("snap")
    assert quantity_bytes(snap["status"]["restoreSize"]) == 64 * MiB

    # Change the source after the snapshot: the restore must not see it.
    kube.pod("overwriter", "source", "dd if=/dev/urandom of=/data/blob bs=1M count=8 && sync", node=node)
    assert kube.wait_finished("overwriter") == "Succeeded"

    kube.pvc(
        "restored", "64Mi", {"apiGroup": "snapshot.storage.k8s.io", "kind": "VolumeSnapshot", "name": "snap"}
    )
    kube.pod("reader", "restored", "sha256sum -c /data/sum", node=node)
    assert kube.wait_finished("reader") == "Succeeded", kube.logs("reader")
    assert "/data/blob: OK" in kube.logs("reader")


def test_clone_copies_the_data(kube: Kube) -> None:
    kube.pvc("origin", "64Mi")
    kube.pod("writer", "origin", WRITE_AND_SUM)
    assert kube.wait_finished("writer") == "Succeeded", kube.logs("writer")
    node = kube.core.read_namespaced_pod("writer", kube.namespace).spec.node_name

    kube.pvc("copy", "64Mi", {"kind": "PersistentVolumeClaim", "name": "origin"})
    kube.pod("reader", "copy", "sha256sum -c /data/sum && echo changed > /data/blob", node=node)
    assert kube.wait_finished("reader") == "Succeeded", kube.logs("reader")
    # The clone is independent: writing it left the origin alone.
    kube.pod("checker", "origin", "sha256sum -c /data/sum", node=node)
    assert kube.wait_finished("checker") == "Succeeded", kube.logs("checker")


def test_online_expansion_raises_the_limit(kube: Kube) -> None:
    kube.pvc("grow", "32Mi")
    kube.pod("app", "grow")
    node = kube.wait_running("app").spec.node_name

    rc, out = kube.exec("app", "dd if=/dev/zero of=/data/a bs=1M count=48 2>&1; sync")
    assert "Disk quota exceeded" in out, out
    rc, out = kube.exec("app", "rm -f /data/a && sync")
    assert rc == 0, out

    kube.core.patch_namespaced_persistent_volume_claim(
        "grow", kube.namespace, {"spec": {"resources": {"requests": {"storage": "96Mi"}}}}
    )

    def expanded() -> bool:
        pvc = kube.core.read_namespaced_persistent_volume_claim("grow", kube.namespace)
        size = (pvc.status.capacity or {}).get("storage", "0")
        pending = [c.type for c in pvc.status.conditions or []]
        return quantity_bytes(size) == 96 * MiB and "FileSystemResizePending" not in pending

    # Trivial resizer updates the PV; the kubelet then calls NodeExpandVolume on the mounted volume.
    wait_for("claim expanded to 96Mi while in use", expanded, 300)
    rc, out = kube.exec("app", "dd if=/dev/zero of=/data/b bs=1M count=64 2>&1 && sync")
    assert rc == 0, out

    pvc_labels = {"pvc_namespace": kube.namespace, "pvc_name": "grow"}

    def limit() -> float | None:
        sample = find_sample(kube.driver_metrics(node), "btrfs_csi_volume_limit_bytes", **pvc_labels)
        return sample.value if sample and sample.value == 96 * MiB else None

    wait_for("exported limit 96Mi", limit, 60)


def test_deleting_the_claim_removes_the_subvolume(cluster: Cluster, kube: Kube) -> None:
    kube.pvc("doomed", "32Mi")
    kube.pod("writer", "doomed", "echo bye > /data/file && sync")
    assert kube.wait_finished("writer") == "Succeeded"
    node = kube.core.read_namespaced_pod("writer", kube.namespace).spec.node_name
    pv = kube.pv_of("doomed")
    assert pv.spec.csi.driver == DRIVER_NAME
    subvolume = cluster.host_pool(node).mountpoint / "volumes" / pv.spec.csi.volume_handle
    assert subvolume.is_dir(), f"{subvolume} should exist while the claim does"

    kube.delete_pod("writer")
    kube.delete_pvc("doomed")

    def pv_gone() -> bool:
        return not any(p.metadata.name == pv.metadata.name for p in kube.core.list_persistent_volume().items)

    wait_for(f"PV {pv.metadata.name} deleted", pv_gone, 180)
    assert not subvolume.exists()
    if shutil.which("btrfs"):
        listing = subprocess.run(
            ["btrfs", "subvolume", "list", str(cluster.host_pool(node).mountpoint)],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        assert pv.spec.csi.volume_handle not in listing.stdout


def test_pod_comes_back_to_the_volume_node(cluster: Cluster, kube: Kube) -> None:
    kube.pvc("sticky", "32Mi")
    kube.pod("first", "sticky", "echo here > /data/marker && sync && sleep 3600")
    node = kube.wait_running("first").spec.node_name
    terms = kube.pv_of("sticky").spec.node_affinity.required.node_selector_terms
    assert [(e.key, e.values) for t in terms for e in t.match_expressions] == [(TOPOLOGY_KEY, [node])]

    kube.delete_pod("first")
    # Ask the scheduler to prefer the other worker: the volume's node affinity must win.
    other = next(n for n in cluster.worker_names() if n != node)
    preferring_other = {
        "preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 100, "preference": {"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [other]}]}}
        ]
    }  # fmt: skip
    body = {
        "metadata": {"name": "second"},
        "spec": {
            "restartPolicy": "Never",
            "affinity": {"nodeAffinity": preferring_other},
            "containers": [{
                "name": "app", "image": DRIVER_IMAGE, "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", "cat /data/marker"],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
            }],
            "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "sticky"}}],
        },
    }  # fmt: skip
    kube.core.create_namespaced_pod(kube.namespace, body)
    assert kube.wait_finished("second") == "Succeeded", kube.logs("second")
    assert kube.core.read_namespaced_pod("second", kube.namespace).spec.node_name == node
    assert kube.logs("second").strip() == "here"


def test_driver_exports_pool_health(cluster: Cluster, kube: Kube) -> None:
    for node in cluster.worker_names():
        samples = kube.driver_metrics(node)
        size = find_sample(samples, "btrfs_csi_pool_size_bytes")
        assert size is not None and size.value > 1 << 30
        modes = [s for s in samples if s.name == "btrfs_csi_pool_quota_mode" and s.value == 1]
        assert len(modes) == 1 and modes[0].labels["mode"] in ("simple", "full"), modes
        inconsistent = find_sample(samples, "btrfs_csi_pool_qgroups_inconsistent")
        assert inconsistent is not None and inconsistent.value == 0
        build = find_sample(samples, "btrfs_csi_build_info")
        assert build is not None and build.labels["driver_name"] == DRIVER_NAME
