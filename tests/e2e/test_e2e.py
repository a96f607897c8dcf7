"""The PVC scenarios, end to end on a real cluster (providers.py): real pods and claims, driven
through the Kubernetes API only. The host pool is read only as an oracle (does the subvolume
exist), never to act.

Run with `make e2e`. Snapshots and clones are consumed on the node that holds the source (the
consumer pod is pinned there): a subvolume snapshot cannot leave its pool. The scenarios run in
file order; test_release_lifecycle.py, collected after this file, upgrades, uninstalls and reinstalls
the release.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.e2e.kube import (
    SNAPSHOT_GROUP,
    SNAPSHOT_VERSION,
    WRITE_AND_SUM,
    Kube,
    MiB,
    find_sample,
    parse_metrics,
    quantity_bytes,
)
from tests.e2e.providers import Provider
from tests.e2e.release import DRIVER_NAME, NAMESPACE, TOPOLOGY_KEY
from tests.e2e.steps import wait_for

pytestmark = pytest.mark.e2e

SNAPSHOT_SOURCE = {"apiGroup": SNAPSHOT_GROUP, "kind": "VolumeSnapshot"}


def driver_sample(kube: Kube, node: str, name: str, claim: str) -> float | None:
    labels = {"pvc_namespace": kube.namespace, "pvc_name": claim}
    sample = find_sample(kube.driver_metrics(node), name, **labels)
    return None if sample is None else sample.value


def test_01_claim_binds_mounts_and_holds_its_size(kube: Kube) -> None:
    kube.pvc("data", "64Mi")
    kube.pod("app", "data", f"{WRITE_AND_SUM} && sha256sum -c /data/sum && sleep 3600")
    node = kube.wait_running("app").spec.node_name
    pv = kube.pv_of("data")
    assert pv.spec.csi.driver == DRIVER_NAME
    assert quantity_bytes(pv.spec.capacity["storage"]) == 64 * MiB
    terms = pv.spec.node_affinity.required.node_selector_terms
    assert [(e.key, e.values) for t in terms for e in t.match_expressions] == [(TOPOLOGY_KEY, [node])]

    def limit() -> float | None:
        return driver_sample(kube, node, "btrfs_csi_volume_limit_bytes", "data")

    assert wait_for("the volume's qgroup limit exported", limit, 120) == 64 * MiB, (
        "PV capacity = qgroup limit"
    )
    rc, out = kube.exec("app", "sha256sum -c /data/sum")
    assert rc == 0, out
    rc, out = kube.exec("app", "dd if=/dev/zero of=/data/fill bs=1M count=80 2>&1; echo dd-exit=$?; sync")
    assert "Disk quota exceeded" in out, out
    assert "dd-exit=0" not in out, out
    rc, out = kube.exec("app", "stat -c size=%s /data/fill")
    assert rc == 0 and 32 * MiB < int(out.split("size=")[1].split()[0]) <= 64 * MiB, out


def test_02_capacity_is_published_and_falls_after_provisioning(cluster: Provider, kube: Kube) -> None:
    node = cluster.worker_names()[0]

    def capacity() -> int | None:
        for item in kube.storage.list_namespaced_csi_storage_capacity(NAMESPACE).items:
            labels = (item.node_topology.match_labels or {}) if item.node_topology else {}
            if item.storage_class_name == "btrfs" and labels.get(TOPOLOGY_KEY) == node and item.capacity:
                assert [o.kind for o in item.metadata.owner_references or []] == ["DaemonSet"]
                return quantity_bytes(item.capacity)
        return None

    before = wait_for(f"CSIStorageCapacity of {node}", capacity, 180)
    assert before > 1 << 30, before
    kube.pvc("big", "1Gi")
    kube.pod("user", "big", "true", node=node)
    assert kube.wait_finished("user") == "Succeeded", kube.logs("user")

    def fell() -> int | None:
        now = capacity()
        return now if now is not None and now <= before - (768 << 20) else None

    # The provisioner refreshes capacity every capacityPollInterval (1m by default), so `before`
    # may still count a volume the previous scenario deleted: most of the 1Gi must be gone.
    wait_for("capacity down by the 1Gi claim", fell, 240)


def test_03_snapshot_restore_and_clone_carry_the_data(kube: Kube) -> None:
    kube.pvc("source", "64Mi")
    kube.pod("writer", "source", WRITE_AND_SUM)
    assert kube.wait_finished("writer") == "Succeeded", kube.logs("writer")
    node = kube.node_of("writer")

    kube.snapshot("snap", "source")
    snap = kube.wait_snapshot_ready("snap")
    assert quantity_bytes(snap["status"]["restoreSize"]) == 64 * MiB
    kube.pvc("clone", "64Mi", {"kind": "PersistentVolumeClaim", "name": "source"})
    kube.pod("cloner", "clone", "sha256sum -c /data/sum", node=node)
    assert kube.wait_finished("cloner") == "Succeeded", kube.logs("cloner")

    # Change the source afterwards: neither the restore nor the clone may see it.
    kube.pod("overwriter", "source", "echo changed > /data/blob && sync", node=node)
    assert kube.wait_finished("overwriter") == "Succeeded", kube.logs("overwriter")
    kube.pvc("restored", "64Mi", {**SNAPSHOT_SOURCE, "name": "snap"})
    kube.pod("reader", "restored", "sha256sum -c /data/sum", node=node)
    assert kube.wait_finished("reader") == "Succeeded", kube.logs("reader")
    assert "/data/blob: OK" in kube.logs("reader")
    kube.pod("clone-reader", "clone", "sha256sum -c /data/sum", node=node)
    assert kube.wait_finished("clone-reader") == "Succeeded", kube.logs("clone-reader")


def test_04_online_expansion_raises_the_limit(kube: Kube) -> None:
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

    # The trivial resizer updates the PV; the kubelet then calls NodeExpandVolume on the mount.
    wait_for("claim expanded to 96Mi while in use", expanded, 300)
    rc, out = kube.exec("app", "dd if=/dev/zero of=/data/b bs=1M count=64 2>&1 && sync")
    assert rc == 0, out

    def limit() -> float | None:
        value = driver_sample(kube, node, "btrfs_csi_volume_limit_bytes", "grow")
        return value if value == 96 * MiB else None

    wait_for("exported limit 96Mi", limit, 60)


def test_05_access_modes(kube: Kube) -> None:
    kube.pvc("shared", "32Mi")
    kube.pod("one", "shared", "echo one > /data/one && sleep 3600")
    node = kube.wait_running("one").spec.node_name
    kube.pod("two", "shared", "cat /data/one && sleep 3600", node=node)
    kube.wait_running("two")
    assert kube.logs("two").strip() == "one", "RWO: a second pod on the same node mounts the volume"

    kube.pvc("single", "32Mi", access_mode="ReadWriteOncePod")
    kube.pod("first", "single")
    kube.wait_running("first")
    kube.pod("second", "single", node=node)

    def refused() -> str | None:
        pod = kube.core.read_namespaced_pod("second", kube.namespace)
        assert pod.status.phase == "Pending", f"RWOP: the second pod must not run ({pod.status.phase})"
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False" and condition.message:
                return str(condition.message)
        return None

    message = wait_for("the RWOP claim refused to the second pod", refused, 120)
    assert "ReadWriteOncePod" in message, message


def test_06_deleting_claims_and_snapshots_removes_their_subvolumes(cluster: Provider, kube: Kube) -> None:
    kube.pvc("doomed", "32Mi")
    kube.pod("writer", "doomed", "echo bye > /data/file && sync")
    assert kube.wait_finished("writer") == "Succeeded", kube.logs("writer")
    pool = cluster.pool_path(kube.node_of("writer"))
    pv = kube.pv_of("doomed")
    subvolume = pool / "volumes" / pv.spec.csi.volume_handle
    assert subvolume.is_dir(), f"{subvolume} should exist while the claim does"

    kube.snapshot("snap", "doomed")
    snap = kube.wait_snapshot_ready("snap")
    content = kube.custom.get_cluster_custom_object(
        SNAPSHOT_GROUP,
        SNAPSHOT_VERSION,
        "volumesnapshotcontents",
        snap["status"]["boundVolumeSnapshotContentName"],
    )
    snapshot_dir = pool / "snapshots" / content["status"]["snapshotHandle"]
    assert snapshot_dir.is_dir(), f"{snapshot_dir} should exist while the snapshot does"

    kube.delete_pod("writer")
    kube.delete_pvc("doomed")
    wait_for(f"PV {pv.metadata.name} deleted", lambda: pv.metadata.name not in pv_names(kube), 180)
    assert not subvolume.exists()
    assert snapshot_dir.is_dir(), "a snapshot outlives the volume it was taken from"

    kube.custom.delete_namespaced_custom_object(
        SNAPSHOT_GROUP, SNAPSHOT_VERSION, kube.namespace, "volumesnapshots", "snap"
    )
    wait_for(f"snapshot {snapshot_dir.name} removed from the pool", lambda: not snapshot_dir.exists(), 180)


def test_07_driver_restart_keeps_volumes_data_and_mounts(cluster: Provider, kube: Kube) -> None:
    kube.pvc("kept", "32Mi")
    kube.pod("app", "kept", f"{WRITE_AND_SUM} && sleep 3600")
    node = kube.wait_running("app").spec.node_name
    wait_for("data written", lambda: kube.exec("app", "test -s /data/sum")[0] == 0, 60)
    old = kube.node_plugin_pod(node)
    kube.core.delete_namespaced_pod(old.metadata.name, NAMESPACE, grace_period_seconds=0)

    def replaced() -> Any:
        try:
            pod = kube.node_plugin_pod(node)
        except AssertionError:
            return None
        ready = all(s.ready for s in pod.status.container_statuses or [])
        return pod if pod.metadata.uid != old.metadata.uid and ready else None

    wait_for("a new node plugin pod, ready", replaced, 300)
    rc, out = kube.exec(
        "app", "grep -q ' /data ' /proc/mounts && sha256sum -c /data/sum && echo more > /data/more"
    )
    assert rc == 0, out
    kube.pvc("fresh", "32Mi")
    kube.pod("newcomer", "fresh", "echo hello > /data/x && cat /data/x", node=node)
    assert kube.wait_finished("newcomer") == "Succeeded", kube.logs("newcomer")


def test_08_driver_and_kubelet_metrics_agree(cluster: Provider, kube: Kube) -> None:
    kube.pvc("watched", "64Mi")
    kube.pod("writer", "watched", "dd if=/dev/urandom of=/data/blob bs=1M count=20 && sync && sleep 3600")
    node = kube.wait_running("writer").spec.node_name
    wait_for("20Mi written", lambda: kube.exec("writer", "test -f /data/blob && sync")[0] == 0, 60)
    pvc_labels = {"namespace": kube.namespace, "persistentvolumeclaim": "watched"}

    def agreeing() -> tuple[float, float] | None:
        used = driver_sample(kube, node, "btrfs_csi_volume_referenced_bytes", "watched")
        samples = parse_metrics(cluster.kubelet_get(node, "metrics"))
        kubelet = find_sample(samples, "kubelet_volume_stats_used_bytes", **pvc_labels)
        if used is None or kubelet is None or used < 20 * MiB:
            return None
        return (used, kubelet.value) if used == kubelet.value else None

    # The kubelet refreshes volume stats periodically (volumeStatsAggPeriod).
    used, _ = wait_for("kubelet_volume_stats_used_bytes = btrfs_csi_volume_referenced_bytes", agreeing, 240)
    assert 20 * MiB <= used <= 64 * MiB
    samples = parse_metrics(cluster.kubelet_get(node, "metrics"))
    capacity = find_sample(samples, "kubelet_volume_stats_capacity_bytes", **pvc_labels)
    assert capacity is not None and capacity.value == 64 * MiB, "stats report the qgroup limit, not the pool"
    assert driver_sample(kube, node, "btrfs_csi_volume_limit_bytes", "watched") == 64 * MiB
    pool = kube.driver_metrics(node)
    inconsistent = find_sample(pool, "btrfs_csi_pool_qgroups_inconsistent")
    assert inconsistent is not None and inconsistent.value == 0
    build = find_sample(pool, "btrfs_csi_build_info")
    assert build is not None and build.labels["driver_name"] == DRIVER_NAME


def test_09_fs_group_lets_a_non_root_pod_write(kube: Kube) -> None:
    kube.pvc("group", "32Mi")
    context = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000, "runAsNonRoot": True}
    kube.pod(
        "app",
        "group",
        "id && stat -c 'group=%g' /data && echo ok > /data/mine && ls -ln /data",
        security_context=context,
    )
    assert kube.wait_finished("app") == "Succeeded", kube.logs("app")
    out = kube.logs("app")
    assert "group=2000" in out, out
    csi_driver = kube.storage.read_csi_driver(DRIVER_NAME)
    assert csi_driver.spec.fs_group_policy == "File"


def pv_names(kube: Kube) -> set[str]:
    return {p.metadata.name for p in kube.core.list_persistent_volume().items}


def test_10_a_claim_moved_to_another_volume_attributes_class_changes_its_compression(
    cluster: Provider, kube: Kube
) -> None:
    # The resizer applies a class change through the driver of its own node (volumes are node-local
    # and node plugins cannot reach each other yet): the claim's pod goes to that node.
    [resizer] = kube.core.list_namespaced_pod(
        NAMESPACE, label_selector="app.kubernetes.io/component=resizer"
    ).items
    node = resizer.spec.node_name
    classes = {"btrfs-e2e-zstd": "zstd", "btrfs-e2e-lzo": "lzo"}
    for name, algorithm in classes.items():
        kube.storage.create_volume_attributes_class(
            {
                "metadata": {"name": name},
                "driverName": DRIVER_NAME,
                "parameters": {"compression": algorithm},
            }
        )
    try:
        kube.pvc("tuned", "64Mi", attributes_class="btrfs-e2e-zstd")
        kube.pod("app", "tuned", "echo before > /data/before && sync && sleep 3600", node=node)
        kube.wait_running("app")
        root = cluster.pool_path(node) / "volumes" / kube.pv_of("tuned").spec.csi.volume_handle

        def compression() -> str | None:
            try:
                return os.getxattr(root, "btrfs.compression").decode()
            except OSError:
                return None

        assert compression() == "zstd", "the class at creation"
        kube.core.patch_namespaced_persistent_volume_claim(
            "tuned", kube.namespace, {"spec": {"volumeAttributesClassName": "btrfs-e2e-lzo"}}
        )

        def moved() -> bool:
            claim = kube.core.read_namespaced_persistent_volume_claim("tuned", kube.namespace)
            return bool(claim.status.current_volume_attributes_class_name == "btrfs-e2e-lzo")

        wait_for("the claim's current class is btrfs-e2e-lzo", moved, 300)
        assert compression() == "lzo", "ControllerModifyVolume set the property on the published volume"
        rc, out = kube.exec("app", "echo after > /data/after && sync && cat /data/before /data/after")
        assert rc == 0 and out.split() == ["before", "after"], out
        assert os.getxattr(root / "after", "btrfs.compression") == b"lzo"

        def exported() -> str | None:
            sample = find_sample(
                kube.driver_metrics(node),
                "btrfs_csi_volume_info",
                pvc_namespace=kube.namespace,
                pvc_name="tuned",
            )
            return None if sample is None else sample.labels["compression"]

        assert wait_for("btrfs_csi_volume_info shows lzo", lambda: exported() == "lzo" or None, 60)
    finally:
        kube.delete_pod("app")
        for name in classes:
            kube.storage.delete_volume_attributes_class(name)
