"""Faults from below, through a served driver: the pool full (ENOSPC) during a create and during a write in
a published volume, a volume's quota hit (EDQUOT), the pool remounted read-only, subvolumes deleted and
foreign objects dropped into the pool behind the driver's back, qgroup accounting left inconsistent, and
quotas disabled. Each refusal carries a clear code and reason, volume_condition says what is wrong, and
after each fault the driver still answers Probe and serves the other volumes.
"""

import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from btrfs_core import capacity, quota
from csi.pb import csi_pb2
from tests.core.oracle import cli
from tests.csi.conftest import Client, MiB, code_of, error_of, mount_capability
from tests.csi.test_conformance_node import expand_request, stats_request, write_until_refused
from tests.stress.harness import RPC_TIMEOUT, ServedDriver, check_consistent, count, served

pytestmark = pytest.mark.kernel

C = grpc.StatusCode


@pytest.fixture
def driver(btrfs_mount: Path) -> Iterator[ServedDriver]:
    with served(btrfs_mount) as running:
        yield running


@pytest.fixture
def client(driver: ServedDriver) -> Client:
    return driver.client()


@pytest.fixture
def sandbox(driver: ServedDriver) -> Iterator[Path]:
    """Where volumes are published; any mount left there is taken down afterwards."""
    path = driver.workdir / "targets"
    path.mkdir()
    yield path
    for target in path.iterdir():
        if os.path.ismount(target):
            subprocess.run(["umount", "--lazy", str(target)], check=False, timeout=60)


def condition(client: Client, volume_id: str) -> csi_pb2.VolumeCondition:
    request = csi_pb2.ControllerGetVolumeRequest(volume_id=volume_id)
    return client.controller.ControllerGetVolume(request, timeout=RPC_TIMEOUT).status.volume_condition


def listed_conditions(client: Client) -> dict[str, csi_pb2.VolumeCondition]:
    response = client.controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=RPC_TIMEOUT)
    return {entry.volume.volume_id: entry.status.volume_condition for entry in response.entries}


def still_serving(client: Client, other: str) -> None:
    """Probe is ready, and the other volume is listed, readable and can be snapshotted."""
    assert client.identity.Probe(csi_pb2.ProbeRequest(), timeout=RPC_TIMEOUT).ready.value
    assert other in listed_conditions(client)
    client.controller.ControllerGetVolume(
        csi_pb2.ControllerGetVolumeRequest(volume_id=other), timeout=RPC_TIMEOUT
    )
    client.controller.GetCapacity(csi_pb2.GetCapacityRequest(), timeout=RPC_TIMEOUT)
    count("faults survived (driver still serving)")


def fill(path: Path) -> int:
    """Allocates a file until the filesystem has no data space left; returns the bytes allocated."""
    allocated, chunk = 0, 256 * MiB
    with open(path, "wb") as f:
        while chunk >= 4096:
            try:
                os.posix_fallocate(f.fileno(), allocated, chunk)
                allocated += chunk
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                chunk //= 2
        os.fsync(f.fileno())
    return allocated


def test_pool_full_refuses_creates_and_says_why(client: Client, btrfs_mount: Path) -> None:
    client.create_volume("other", 8 * MiB)
    fill(btrfs_mount / "not-a-volume")  # something else on the pool's filesystem took the space
    # Creates share a reading of the pool's space this young (README: Capacity); fallocate was quicker.
    time.sleep(capacity.SPACE_READING_SECONDS)
    request = csi_pb2.CreateVolumeRequest(
        name="late",
        capacity_range=csi_pb2.CapacityRange(required_bytes=MiB),
        volume_capabilities=[mount_capability()],
    )
    refused = error_of(client.controller.CreateVolume, request)
    assert refused.code() is C.RESOURCE_EXHAUSTED and "available" in (refused.details() or "")
    clone = csi_pb2.CreateVolumeRequest(
        name="clone",
        volume_capabilities=[mount_capability()],
        capacity_range=csi_pb2.CapacityRange(required_bytes=8 * MiB),
    )
    clone.volume_content_source.volume.volume_id = "other"
    assert code_of(client.controller.CreateVolume, clone) is C.RESOURCE_EXHAUSTED
    full = condition(client, "other")
    assert full.abnormal and "free space" in full.message, full
    still_serving(client, "other")
    os.unlink(btrfs_mount / "not-a-volume")
    cli("btrfs", "filesystem", "sync", str(btrfs_mount))
    client.controller.CreateVolume(request, timeout=RPC_TIMEOUT)
    assert not condition(client, "other").abnormal
    check_consistent(client, btrfs_mount)


def test_pool_full_during_a_write_in_a_published_volume(
    client: Client, btrfs_mount: Path, sandbox: Path
) -> None:
    client.create_volume("other", 8 * MiB)
    available = client.controller.GetCapacity(
        csi_pb2.GetCapacityRequest(), timeout=RPC_TIMEOUT
    ).available_capacity
    big = client.create_volume("big", available // MiB * MiB)  # as much as the pool has free
    client.publish(big.volume_id, sandbox / "big")
    _, error = write_until_refused(sandbox / "big" / "fill", 16 * MiB)
    assert error is None, error
    fill(btrfs_mount / "not-a-volume")  # something else takes the rest: the volume's writes hit ENOSPC
    _, error = write_until_refused(sandbox / "big" / "fill", 64 * MiB)
    assert error == errno.ENOSPC, error
    stats = client.node.NodeGetVolumeStats(stats_request(big.volume_id, sandbox / "big"), timeout=RPC_TIMEOUT)
    assert stats.volume_condition.abnormal and "free space" in stats.volume_condition.message
    assert condition(client, "other").abnormal  # every volume of a full pool is affected
    still_serving(client, "other")
    os.unlink(btrfs_mount / "not-a-volume")
    cli("btrfs", "filesystem", "sync", str(btrfs_mount))
    stats = client.node.NodeGetVolumeStats(stats_request(big.volume_id, sandbox / "big"), timeout=RPC_TIMEOUT)
    assert not stats.volume_condition.abnormal, stats.volume_condition
    client.unpublish(big.volume_id, sandbox / "big")


def test_quota_hit_is_edquot_in_the_pod_and_abnormal_until_expanded(
    client: Client, btrfs_mount: Path, sandbox: Path
) -> None:
    client.create_volume("other", 8 * MiB)
    volume = client.create_volume("small", 8 * MiB)
    target = sandbox / "small"
    client.publish(volume.volume_id, target)
    _, error = write_until_refused(target / "fill", 64 * MiB)
    assert error == errno.EDQUOT
    cli("btrfs", "filesystem", "sync", str(btrfs_mount))  # counters are those of the last commit
    stats = client.node.NodeGetVolumeStats(stats_request(volume.volume_id, target), timeout=RPC_TIMEOUT)
    assert stats.volume_condition.abnormal and "full" in stats.volume_condition.message
    assert stats.usage[0].available < MiB
    still_serving(client, "other")
    client.node.NodeExpandVolume(expand_request(volume.volume_id, target, 32 * MiB), timeout=RPC_TIMEOUT)
    written, error = write_until_refused(target / "more", 8 * MiB)
    assert error is None and written == 8 * MiB
    cli("btrfs", "filesystem", "sync", str(btrfs_mount))
    stats = client.node.NodeGetVolumeStats(stats_request(volume.volume_id, target), timeout=RPC_TIMEOUT)
    assert not stats.volume_condition.abnormal, stats.volume_condition
    client.unpublish(volume.volume_id, target)
    check_consistent(client, btrfs_mount)


@pytest.fixture
def read_only(btrfs_mount: Path) -> Iterator[Path]:
    """Remounts the pool read-only for the test (rw again afterwards, whatever happens)."""
    yield btrfs_mount
    subprocess.run(["mount", "-o", "remount,rw", str(btrfs_mount)], check=False, timeout=60)


def test_read_only_pool_refuses_changes_and_keeps_serving_reads(
    driver: ServedDriver, client: Client, read_only: Path, sandbox: Path
) -> None:
    client.create_volume("kept", 8 * MiB)
    client.create_snapshot("kept-snap", "kept")
    cli("mount", "-o", "remount,ro", str(read_only))
    c = client.controller
    refusals: dict[str, tuple[Callable[..., Any], Any]] = {
        "CreateVolume": (
            c.CreateVolume,
            csi_pb2.CreateVolumeRequest(
                name="new",
                volume_capabilities=[mount_capability()],
                capacity_range=csi_pb2.CapacityRange(required_bytes=MiB),
            ),
        ),
        "CreateSnapshot": (
            c.CreateSnapshot,
            csi_pb2.CreateSnapshotRequest(name="new-snap", source_volume_id="kept"),
        ),
        "DeleteVolume": (c.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id="kept")),
        "DeleteSnapshot": (c.DeleteSnapshot, csi_pb2.DeleteSnapshotRequest(snapshot_id="kept-snap")),
    }
    for method, (call, request) in refusals.items():
        refused = error_of(call, request)
        assert refused.code() is C.FAILED_PRECONDITION, (method, refused.code(), refused.details())
        assert "read-only" in (refused.details() or ""), (method, refused.details())
    # What exists is still what it was: idempotent repeats, lists, gets, a (read-only) publish.
    assert client.create_volume("kept", 8 * MiB).volume_id == "kept"
    assert client.create_snapshot("kept-snap", "kept").snapshot_id == "kept-snap"
    ro = condition(client, "kept")
    assert ro.abnormal and "read-only" in ro.message
    assert listed_conditions(client)["kept"].abnormal
    client.publish("kept", sandbox / "kept", readonly=True)
    still_serving(client, "kept")
    # A restart on the read-only pool comes up and serves.
    driver.kill()
    driver.start()
    driver.wait_ready()
    client = driver.client()
    still_serving(client, "kept")
    client.unpublish("kept", sandbox / "kept")
    cli("mount", "-o", "remount,rw", str(read_only))
    assert not condition(client, "kept").abnormal
    client.create_volume("new", MiB)
    check_consistent(client, read_only)


def test_subvolumes_deleted_behind_the_drivers_back(client: Client, btrfs_mount: Path, sandbox: Path) -> None:
    client.create_volume("other", 8 * MiB)
    for name in ("gone", "gone-published"):
        client.create_volume(name, 8 * MiB)
    client.create_snapshot("gone-snap", "other")
    client.publish("gone-published", sandbox / "t")
    (sandbox / "t" / "data").write_text("in use")
    for path in ("volumes/gone", "volumes/gone-published", "snapshots/gone-snap"):
        cli("btrfs", "subvolume", "delete", str(btrfs_mount / path))
    c, n = client.controller, client.node
    assert code_of(c.ControllerGetVolume, csi_pb2.ControllerGetVolumeRequest(volume_id="gone")) is C.NOT_FOUND
    assert code_of(c.GetSnapshot, csi_pb2.GetSnapshotRequest(snapshot_id="gone-snap")) is C.NOT_FOUND
    assert code_of(n.NodeGetVolumeStats, stats_request("gone-published", sandbox / "t")) is C.NOT_FOUND
    assert set(listed_conditions(client)) == {"other"}
    still_serving(client, "other")
    # The pod can still go: its mount of the deleted volume is taken down; then deletes are OK.
    client.unpublish("gone-published", sandbox / "t")
    assert not (sandbox / "t").exists()
    state = check_consistent(client, btrfs_mount)  # (the cleaner waits for the last mount to go)
    assert set(state.volumes) == {"other"} and not state.snapshots
    unpublish = csi_pb2.NodeUnpublishVolumeRequest(volume_id="gone-published", target_path=str(sandbox / "t"))
    assert code_of(n.NodeUnpublishVolume, unpublish) is C.NOT_FOUND  # nothing of it left anywhere
    for volume_id in ("gone", "gone-published"):
        c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=RPC_TIMEOUT)
    c.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id="gone-snap"), timeout=RPC_TIMEOUT)
    # And the names can be used again.
    assert client.create_volume("gone", 4 * MiB).capacity_bytes == 4 * MiB
    check_consistent(client, btrfs_mount)


def test_foreign_objects_in_the_pool_are_not_volumes(
    driver: ServedDriver, client: Client, btrfs_mount: Path
) -> None:
    client.create_volume("other", 8 * MiB)
    cli("btrfs", "subvolume", "create", str(btrfs_mount / "volumes" / "alien"))
    (btrfs_mount / "volumes" / "plain").mkdir()
    (btrfs_mount / "volumes" / "plain" / "data").write_text("not ours")
    (btrfs_mount / "volumes" / "empty-dir").mkdir()
    (btrfs_mount / "volumes" / "file").write_text("not ours")
    (btrfs_mount / "snapshots" / "stray").write_text("not ours")
    for volume_id in ("alien", "plain", "empty-dir", "file"):
        get = csi_pb2.ControllerGetVolumeRequest(volume_id=volume_id)
        assert code_of(client.controller.ControllerGetVolume, get) is C.NOT_FOUND, volume_id
        create = csi_pb2.CreateVolumeRequest(
            name=volume_id,
            volume_capabilities=[mount_capability()],
            capacity_range=csi_pb2.CapacityRange(required_bytes=MiB),
        )
        refused = error_of(client.controller.CreateVolume, create)
        assert refused.code() is C.ALREADY_EXISTS, (volume_id, refused.code(), refused.details())
    assert set(listed_conditions(client)) == {"other"}
    assert code_of(client.controller.ListSnapshots, csi_pb2.ListSnapshotsRequest()) is C.OK
    driver.kill()
    driver.start()
    driver.wait_ready()
    client = driver.client()
    still_serving(client, "other")
    assert (btrfs_mount / "volumes" / "plain" / "data").read_text() == "not ours"  # left alone
    assert (btrfs_mount / "volumes" / "empty-dir").is_dir()


@pytest.fixture
def full_driver(btrfs_mount: Path) -> Iterator[ServedDriver]:
    with served(btrfs_mount, "--quota-mode", "full") as running:
        yield running


def test_inconsistent_qgroups_make_volumes_abnormal_with_the_reason(
    full_driver: ServedDriver, btrfs_mount: Path
) -> None:
    client = full_driver.client()
    volume = client.create_volume("shared", 32 * MiB)
    client.create_volume("other", 8 * MiB)
    (btrfs_mount / "volumes" / "shared" / "data").write_bytes(os.urandom(4 * MiB))
    client.create_snapshot("shared-snap", volume.volume_id)  # the volume now shares its extents
    # The snapshot's qgroup, not the volume's: the driver moves a volume's own back into its qgroup.
    snapshot = btrfs_mount / "snapshots" / "shared-snap"
    subvolume_id = int(cli("btrfs", "inspect-internal", "rootid", str(snapshot)))
    quota.wait_rescan(btrfs_mount)  # the one the snapshot started (full qgroups)
    cli("btrfs", "qgroup", "create", "1/100", str(btrfs_mount))
    # Without a rescan the accounting of a qgroup with shared extents cannot be updated: inconsistent.
    subprocess.run(
        ["btrfs", "qgroup", "assign", "--no-rescan", f"0/{subvolume_id}", "1/100", str(btrfs_mount)],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert (
        "inconsistent"
        in subprocess.run(
            ["btrfs", "qgroup", "show", str(btrfs_mount)], capture_output=True, text=True, timeout=60
        ).stderr
    )
    for volume_id in ("shared", "other"):
        abnormal = condition(client, volume_id)
        assert abnormal.abnormal and "inconsistent" in abnormal.message, abnormal
    assert all(c.abnormal for c in listed_conditions(client).values())
    still_serving(client, "other")
    client.create_volume("during", 4 * MiB)
    cli("btrfs", "quota", "rescan", "-w", str(btrfs_mount))
    assert not condition(client, "shared").abnormal


def test_quotas_disabled_behind_the_drivers_back(
    driver: ServedDriver, client: Client, btrfs_mount: Path
) -> None:
    client.create_volume("other", 8 * MiB)
    cli("btrfs", "quota", "disable", str(btrfs_mount))
    request = csi_pb2.CreateVolumeRequest(
        name="unlimited",
        volume_capabilities=[mount_capability()],
        capacity_range=csi_pb2.CapacityRange(required_bytes=MiB),
    )
    refused = error_of(client.controller.CreateVolume, request)
    assert refused.code() is C.FAILED_PRECONDITION and "quota" in (refused.details() or ""), refused.details()
    off = condition(client, "other")
    assert off.abnormal and "quota" in off.message
    still_serving(client, "other")
    assert os.listdir(btrfs_mount / ".staging") == []
    # A restart turns quotas on again (auto): the volume's limit is back, it is healthy.
    driver.kill()
    driver.start()
    driver.wait_ready()
    client = driver.client()
    client.controller.CreateVolume(request, timeout=RPC_TIMEOUT)
    assert not condition(client, "unlimited").abnormal
