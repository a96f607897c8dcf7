"""Domain values into response messages, shared by the controller and node services."""

from collections.abc import Mapping

from google.protobuf import timestamp_pb2

from btrfs_core.models import (
    COMPRESSION_KEY,
    NODATACOW_KEY,
    Snapshot,
    Source,
    SourceKind,
    Volume,
    VolumeHealth,
)
from csi.pb import csi_pb2


def content_source_message(source: Source | None) -> csi_pb2.VolumeContentSource | None:
    if source is None:
        return None
    if source.kind is SourceKind.SNAPSHOT:
        snapshot = csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=source.id)
        return csi_pb2.VolumeContentSource(snapshot=snapshot)
    return csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source.id))


def snapshot_message(snapshot: Snapshot) -> csi_pb2.Snapshot:
    created = timestamp_pb2.Timestamp()
    created.FromNanoseconds(int(snapshot.created * 1e9))
    return csi_pb2.Snapshot(
        size_bytes=snapshot.size,
        snapshot_id=snapshot.id,
        source_volume_id=snapshot.source_volume_id,
        creation_time=created,
        ready_to_use=True,  # a btrfs snapshot is whole and committed when the ioctl returns
    )


def condition_message(health: VolumeHealth) -> csi_pb2.VolumeCondition:
    return csi_pb2.VolumeCondition(abnormal=health.abnormal, message=health.message)


def volume_message(volume: Volume, topology: Mapping[str, str], context: bool = False) -> csi_pb2.Volume:
    """With `context`, the volume's tuning as volume_context (ControllerGetVolume, ListVolumes).
    CreateVolume answers without: the PersistentVolume would keep that copy, stale after a modify, and
    publishing needs nothing beyond the ID."""
    return csi_pb2.Volume(
        capacity_bytes=volume.capacity,
        volume_id=volume.id,
        content_source=content_source_message(volume.source),
        accessible_topology=[csi_pb2.Topology(segments=topology)],
        volume_context=tuning_context(volume) if context else None,
    )


def tuning_context(volume: Volume) -> dict[str, str]:
    """The tuning under the parameter keys that set it; no compression key when none is set."""
    compression = volume.tuning.compression
    context = {NODATACOW_KEY: str(volume.tuning.nodatacow).lower()}
    return {COMPRESSION_KEY: str(compression), **context} if compression else context
