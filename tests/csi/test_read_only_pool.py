"""A pool remounted read-only (by an operator, or by btrfs itself after an error): it offers no capacity,
refuses read-write publishes (their writes would fail with EROFS in the pod), says so in the metrics
and in every volume's condition, and keeps serving what still works: read-only publish, unpublish,
and a ready Probe (a restart by the livenessprobe could not repair the pool)."""

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from btrfs_core import publish
from btrfs_exporter import build_registry
from csi.pb import csi_pb2
from tests.csi.conftest import Client, MiB, error_of, mount_capability

pytestmark = pytest.mark.kernel


def remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True, timeout=60)


@pytest.fixture
def sandbox() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="csi-ro-") as directory:
        yield Path(directory)


def test_read_only_pool_offers_nothing_writable(kcsi: Client, sandbox: Path) -> None:
    pool = kcsi.pool
    metrics = build_registry(pool, "btrfs.csi.test").registry
    kcsi.create_volume("kept", 16 * MiB)
    assert kcsi.controller.GetCapacity(csi_pb2.GetCapacityRequest()).available_capacity > 0
    assert metrics.get_sample_value("btrfs_csi_pool_read_only") == 0
    remount(pool.root, "ro")
    try:
        assert kcsi.controller.GetCapacity(csi_pb2.GetCapacityRequest()).available_capacity == 0
        assert metrics.get_sample_value("btrfs_csi_pool_read_only") == 1
        volume = kcsi.controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id="kept"))
        assert volume.status.volume_condition.abnormal
        assert "read-only" in volume.status.volume_condition.message

        target = sandbox / "rw"
        request = csi_pb2.NodePublishVolumeRequest(
            volume_id="kept", target_path=str(target), volume_capability=mount_capability()
        )
        refused = error_of(kcsi.node.NodePublishVolume, request)
        assert refused.code() is grpc.StatusCode.FAILED_PRECONDITION, refused.details()
        assert "read-only" in (refused.details() or "")
        assert not publish.published_at(pool.volume_path("kept"), target)

        kcsi.publish("kept", sandbox / "ro", readonly=True)  # reading still works
        assert publish.published_at(pool.volume_path("kept"), sandbox / "ro")
        assert kcsi.identity.Probe(csi_pb2.ProbeRequest()).ready.value
        kcsi.unpublish("kept", sandbox / "ro")
    finally:
        remount(pool.root, "rw")
    assert kcsi.controller.GetCapacity(csi_pb2.GetCapacityRequest()).available_capacity > 0
    assert metrics.get_sample_value("btrfs_csi_pool_read_only") == 0
    kcsi.publish("kept", sandbox / "rw")
    kcsi.unpublish("kept", sandbox / "rw")
