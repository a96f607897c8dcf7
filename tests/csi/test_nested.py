"""A volume whose pod keeps data in nested subvolumes (containerd, buildkit and docker do): CreateSnapshot
and a clone of it answer FAILED_PRECONDITION naming them, never a ready snapshot that lacks their data.
Runs on the fake pool and on a real btrfs."""

import grpc

from csi.pb import csi_pb2
from tests.csi.conftest import Client, MiB, error_of, mount_capability, tree


def test_snapshot_and_clone_of_a_volume_with_nested_subvolumes_fail_precondition_naming_them(
    csi: Client,
) -> None:
    volume = csi.create_volume("holder", 16 * MiB)
    root = csi.pool.volume_path(volume.volume_id)
    (root / "var" / "lib").mkdir(parents=True)
    csi.pool._fs.create_subvolume(root / "var" / "lib" / "containerd")  # what a pod may do unprivileged
    before = tree(csi.pool.root)

    snapshot = csi_pb2.CreateSnapshotRequest(name="snap", source_volume_id=volume.volume_id)
    clone = csi_pb2.CreateVolumeRequest(
        name="clone",
        capacity_range=csi_pb2.CapacityRange(required_bytes=16 * MiB),
        volume_capabilities=[mount_capability()],
        volume_content_source=csi_pb2.VolumeContentSource(
            volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=volume.volume_id)
        ),
    )
    for call, request in ((csi.controller.CreateSnapshot, snapshot), (csi.controller.CreateVolume, clone)):
        error = error_of(call, request)
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error
        assert "nested subvolumes" in (error.details() or "") and "var/lib/containerd" in (
            error.details() or ""
        )

    assert tree(csi.pool.root) == before  # nothing made, nothing left behind
    listed = csi.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest(), timeout=30)
    assert list(listed.entries) == []
