"""Node service: bind-mount volumes into pods, report their usage, raise their limits.

No NodeStage: a subvolume needs no per-node preparation, so publish bind-mounts the volume directory
straight onto the target and staging_target_path is unused.
"""

import grpc

from btrfs_core.pool import Pool
from btrfs_core.publish import Publisher
from csi import validation as v
from csi.config import Config
from csi.errors import CsiError, failed_precondition, invalid
from csi.locks import KeyedTryLock, target_key, volume_key
from csi.pb import csi_pb2, csi_pb2_grpc
from csi.responses import condition_message

RPC = csi_pb2.NodeServiceCapability.RPC
CAPABILITIES = (RPC.GET_VOLUME_STATS, RPC.EXPAND_VOLUME, RPC.VOLUME_CONDITION, RPC.SINGLE_NODE_MULTI_WRITER)
MAX_VOLUMES_PER_NODE = 0  # no limit: a bind mount costs nothing the node runs out of


class NodeServicer(csi_pb2_grpc.NodeServicer):
    def __init__(self, config: Config, pool: Pool, locks: KeyedTryLock) -> None:
        self._config = config
        self._pool = pool
        self._publisher = Publisher(pool)
        self._locks = locks

    def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodePublishVolumeResponse:
        volume_id = v.required_id(request.volume_id, "volume_id")
        target = v.required_path(request.target_path, "target_path")
        if not request.HasField("volume_capability"):
            raise invalid("volume_capability is required")
        cap = v.capability(request.volume_capability, "volume_capability")
        reason = cap.unsupported()
        if reason:
            raise failed_precondition(f"volume_capability: {reason}")
        with self._locks.hold(volume_key(volume_id), target_key(target)):
            self._publisher.publish(
                volume_id,
                target,
                readonly=request.readonly or cap.readonly,
                options=cap.options,
                exclusive=cap.exclusive,
            )
        return csi_pb2.NodePublishVolumeResponse()

    def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        volume_id = v.required_id(request.volume_id, "volume_id")
        target = v.required_path(request.target_path, "target_path")
        with self._locks.hold(volume_key(volume_id), target_key(target)):
            self._publisher.unpublish(volume_id, target)
        return csi_pb2.NodeUnpublishVolumeResponse()

    def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        volume_id = v.required_id(request.volume_id, "volume_id")
        self._check_published(volume_id, request.volume_path)
        # statfs would show the whole pool; the qgroup is the volume. Counters are those of the last
        # transaction commit (up to the commit interval behind the writes), as the kernel keeps them.
        usage, health = self._pool.stats.volume_stats(volume_id)
        total = usage.limit if usage.limit is not None else self._pool.get_volume(volume_id).capacity
        return csi_pb2.NodeGetVolumeStatsResponse(
            usage=[
                csi_pb2.VolumeUsage(
                    unit=csi_pb2.VolumeUsage.BYTES,
                    total=total,
                    used=usage.referenced,
                    available=max(total - usage.referenced, 0),
                )
            ],
            volume_condition=condition_message(health),
        )

    def NodeExpandVolume(
        self, request: csi_pb2.NodeExpandVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeExpandVolumeResponse:
        volume_id = v.required_id(request.volume_id, "volume_id")
        if not request.volume_path:
            raise invalid("volume_path is required")
        wanted = v.expansion_capacity(request.capacity_range if request.HasField("capacity_range") else None)
        if request.HasField("volume_capability"):
            reason = v.capability(request.volume_capability, "volume_capability").unsupported()
            if reason:
                raise invalid(f"volume_capability: {reason}")
        with self._locks.hold(volume_key(volume_id)):
            self._check_published(volume_id, request.volume_path)
            if wanted is None:
                volume = self._pool.get_volume(volume_id)  # no size asked for: report the one it has
            else:
                # At or below its size already: OK with the size it has (spec); never a shrink.
                volume = self._pool.expand_volume(volume_id, *wanted)
        return csi_pb2.NodeExpandVolumeResponse(capacity_bytes=volume.capacity)

    def _check_published(self, volume_id: str, volume_path: str) -> None:
        """The spec's order: no volume_path is INVALID_ARGUMENT; an unknown volume is NOT_FOUND whatever
        the path; then a malformed path is INVALID_ARGUMENT, and one where this volume is not mounted (a
        relative one included) NOT_FOUND."""
        if not volume_path:
            raise invalid("volume_path is required")
        try:
            path = v.well_formed_path(volume_path, "volume_path")
        except CsiError:
            self._pool.volume_path(volume_id)  # NotFound first when the volume is unknown
            raise
        self._publisher.check_published(volume_id, path)

    def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[csi_pb2.NodeServiceCapability(rpc=RPC(type=cap)) for cap in CAPABILITIES]
        )

    def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(
            node_id=self._config.node_id,
            max_volumes_per_node=MAX_VOLUMES_PER_NODE,
            accessible_topology=csi_pb2.Topology(segments=self._config.topology),
        )

    # NodeStageVolume and NodeUnstageVolume are left to the generated base (UNIMPLEMENTED): no
    # STAGE_UNSTAGE_VOLUME capability, so the CO never calls them.
