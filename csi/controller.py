"""Controller service: volumes and snapshots of this node's pool.

Each RPC validates the request (csi.validation), checks topology, takes the per-ID try-lock, makes its
call into the core and builds the response. Core errors become status codes in the server interceptor.
"""

import grpc
from google.protobuf import wrappers_pb2

from btrfs_core.errors import NotFound
from btrfs_core.models import Snapshot, Volume
from btrfs_core.pool import MIN_VOLUME_BYTES, Pool
from csi import validation as v
from csi.config import Config
from csi.elsewhere import NotHeld
from csi.errors import CsiError
from csi.locks import KeyedTryLock, snapshot_key, volume_key
from csi.pb import csi_pb2, csi_pb2_grpc
from csi.peer.server import PeerEndpoint
from csi.peer.transfers import Request
from csi.responses import condition_message, snapshot_message, volume_message

RPC = csi_pb2.ControllerServiceCapability.RPC
CAPABILITIES = (
    RPC.CREATE_DELETE_VOLUME,
    RPC.CREATE_DELETE_SNAPSHOT,
    RPC.LIST_SNAPSHOTS,
    RPC.CLONE_VOLUME,
    RPC.LIST_VOLUMES,
    RPC.GET_CAPACITY,
    RPC.GET_VOLUME,
    RPC.VOLUME_CONDITION,
    RPC.SINGLE_NODE_MULTI_WRITER,
    RPC.GET_SNAPSHOT,
    RPC.MODIFY_VOLUME,
)


# How long a CreateVolume waits for a transfer from a peer before answering ABORTED (the provisioner
# retries and joins it): most of its deadline, so a small restore answers OK at the first call.
JOIN_SECONDS = 10.0
JOIN_MARGIN_SECONDS = 1.0


def _join_seconds(context: grpc.ServicerContext) -> float:
    remaining = context.time_remaining()
    if remaining is None:
        return JOIN_SECONDS
    return max(0.0, min(JOIN_SECONDS, remaining - JOIN_MARGIN_SECONDS))


class ControllerServicer(csi_pb2_grpc.ControllerServicer):
    def __init__(
        self, config: Config, pool: Pool, locks: KeyedTryLock, peers: PeerEndpoint | None = None
    ) -> None:
        self._config = config
        self._pool = pool
        self._locks = locks
        # With peers: creates from a source another node holds, modifies of a volume another node holds.
        self._not_held = NotHeld(config.node_id, peers.client if peers else None)
        self._remote = peers.remote if peers else None

    def _volume_message(self, volume: Volume, context: bool = False) -> csi_pb2.Volume:
        return volume_message(volume, self._config.topology, context)

    # volumes

    def CreateVolume(
        self, request: csi_pb2.CreateVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.CreateVolumeResponse:
        name = v.required_name(request.name)
        v.supported_capabilities(request.volume_capabilities)
        parameters = v.parameters(request.parameters, v.VOLUME_PARAMETERS)
        tuning = v.tuning(parameters, v.mutable_parameters(request.mutable_parameters))
        capacity_range = request.capacity_range if request.HasField("capacity_range") else None
        required, limit = v.capacity_bounds(capacity_range)
        source = (
            v.content_source(request.volume_content_source)
            if request.HasField("volume_content_source")
            else None
        )
        requirement = (
            request.accessibility_requirements if request.HasField("accessibility_requirements") else None
        )
        v.check_accessible(requirement, self._config.topology, "accessibility_requirements")
        volume_id = Pool.volume_id(name)
        metadata = v.volume_metadata(parameters)
        with self._locks.hold(volume_key(volume_id)):
            if source is not None and self._remote is not None and self._remote.needed(volume_id, source):
                wanted = Request(name, required, source, metadata, limit, tuning)
                volume = self._remote.create(volume_id, wanted, wait=_join_seconds(context))
            else:
                # The core decides the capacity from the range and judges an existing volume by it.
                volume = self._pool.create_volume(
                    name, required, source, metadata, limit=limit, tuning=tuning
                )
        return csi_pb2.CreateVolumeResponse(volume=self._volume_message(volume))

    def DeleteVolume(
        self, request: csi_pb2.DeleteVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.DeleteVolumeResponse:
        volume_id = v.required_id(request.volume_id, "volume_id")
        with self._locks.hold(volume_key(volume_id)):
            if self._remote is not None:  # a restore still under way: cancelled, what it received removed
                self._remote.forget(volume_id, wait=_join_seconds(context))
            # Absent is OK (idempotent); still published is FAILED_PRECONDITION (the core refuses it).
            self._pool.delete_volume(volume_id)
        return csi_pb2.DeleteVolumeResponse()

    def ValidateVolumeCapabilities(
        self, request: csi_pb2.ValidateVolumeCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ValidateVolumeCapabilitiesResponse:
        volume_id = v.required_id(request.volume_id, "volume_id")
        caps = v.capabilities(request.volume_capabilities)
        self._pool.get_volume(volume_id)
        reason = v.unsupported_reason(caps)
        if reason is None:
            try:
                parameters = v.parameters(request.parameters, v.VOLUME_PARAMETERS)
                v.tuning(parameters, v.mutable_parameters(request.mutable_parameters))
            except CsiError as exc:
                reason = exc.message
        if reason is not None:
            return csi_pb2.ValidateVolumeCapabilitiesResponse(message=reason)
        confirmed = csi_pb2.ValidateVolumeCapabilitiesResponse.Confirmed(
            volume_context=request.volume_context,
            volume_capabilities=request.volume_capabilities,
            parameters=request.parameters,
            mutable_parameters=request.mutable_parameters,
        )
        return csi_pb2.ValidateVolumeCapabilitiesResponse(confirmed=confirmed)

    def ListVolumes(
        self, request: csi_pb2.ListVolumesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ListVolumesResponse:
        limit = v.max_entries(request.max_entries)
        after = v.parse_page_token(request.starting_token, "volume")
        # Page through the IDs first: only the page's volumes are read (10,000 volumes, 20 pages).
        ids, next_token = v.paginate(self._pool.list_volume_ids(), str, limit, after)
        page = self._pool.list_volumes(ids)
        Entry, Status = csi_pb2.ListVolumesResponse.Entry, csi_pb2.ListVolumesResponse.VolumeStatus
        entries = [
            Entry(
                volume=self._volume_message(volume, context=True),
                status=Status(volume_condition=condition_message(health)),
            )
            for volume, health in zip(page, self._pool.stats.volumes_health(page), strict=True)
        ]
        return csi_pb2.ListVolumesResponse(entries=entries, next_token=next_token)

    def GetCapacity(
        self, request: csi_pb2.GetCapacityRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetCapacityResponse:
        caps = [
            v.capability(cap, f"volume_capabilities[{i}]")
            for i, cap in enumerate(request.volume_capabilities)
        ]
        v.parameters(request.parameters, v.VOLUME_PARAMETERS)
        topology = request.accessible_topology if request.HasField("accessible_topology") else None
        if v.unsupported_reason(caps) is not None or not v.topology_matches(topology, self._config.topology):
            return csi_pb2.GetCapacityResponse(available_capacity=0)  # nothing this driver could provision
        available = self._pool.available_capacity()
        return csi_pb2.GetCapacityResponse(
            available_capacity=available,
            maximum_volume_size=wrappers_pb2.Int64Value(value=available),
            minimum_volume_size=wrappers_pb2.Int64Value(value=MIN_VOLUME_BYTES),
        )

    def ControllerGetVolume(
        self, request: csi_pb2.ControllerGetVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerGetVolumeResponse:
        volume_id = v.required_id(request.volume_id, "volume_id")
        volume = self._pool.get_volume(volume_id)
        status = csi_pb2.ControllerGetVolumeResponse.VolumeStatus(
            volume_condition=condition_message(self._pool.stats.volume_health(volume_id))
        )
        return csi_pb2.ControllerGetVolumeResponse(volume=self._volume_message(volume, True), status=status)

    def ControllerModifyVolume(
        self, request: csi_pb2.ControllerModifyVolumeRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerModifyVolumeResponse:
        volume_id = v.required_id(request.volume_id, "volume_id")
        mutable = v.mutable_parameters(request.mutable_parameters)
        compression = v.compression(mutable, "mutable_parameters")
        with self._locks.hold(volume_key(volume_id)):
            try:
                self._pool.modify_volume(volume_id, compression)
            except NotFound:
                self._not_held.modify(volume_id, mutable)  # held by another node, or by none
        return csi_pb2.ControllerModifyVolumeResponse()

    def ControllerGetCapabilities(
        self, request: csi_pb2.ControllerGetCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ControllerGetCapabilitiesResponse:
        return csi_pb2.ControllerGetCapabilitiesResponse(
            capabilities=[csi_pb2.ControllerServiceCapability(rpc=RPC(type=cap)) for cap in CAPABILITIES]
        )

    # snapshots

    def CreateSnapshot(
        self, request: csi_pb2.CreateSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.CreateSnapshotResponse:
        name = v.required_name(request.name)
        source_volume_id = v.required_id(request.source_volume_id, "source_volume_id")
        v.parameters(request.parameters, v.SNAPSHOT_PARAMETERS)
        snapshot_id = Pool.snapshot_id(name)
        with self._locks.hold(snapshot_key(snapshot_id)):
            snapshot = self._pool.create_snapshot(name, source_volume_id)
        return csi_pb2.CreateSnapshotResponse(snapshot=snapshot_message(snapshot))

    def DeleteSnapshot(
        self, request: csi_pb2.DeleteSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.DeleteSnapshotResponse:
        snapshot_id = v.required_id(request.snapshot_id, "snapshot_id", "snapshot")
        with self._locks.hold(snapshot_key(snapshot_id)):
            self._pool.delete_snapshot(snapshot_id)
        return csi_pb2.DeleteSnapshotResponse()

    def ListSnapshots(
        self, request: csi_pb2.ListSnapshotsRequest, context: grpc.ServicerContext
    ) -> csi_pb2.ListSnapshotsResponse:
        limit = v.max_entries(request.max_entries)
        after = v.parse_page_token(request.starting_token, "snapshot")
        source_volume_id = (
            v.required_id(request.source_volume_id, "source_volume_id") if request.source_volume_id else ""
        )
        if request.snapshot_id:
            snapshot_id = v.required_id(request.snapshot_id, "snapshot_id", "snapshot")
            try:
                snapshots = [self._pool.get_snapshot(snapshot_id)]
            except NotFound:
                snapshots = []  # a filter that matches nothing is an empty list, not an error
        elif source_volume_id:
            snapshots = self._pool.list_snapshots()  # the source is in each one's metadata
        else:
            # No filter: page through the IDs first and read only the page's snapshots.
            ids, next_token = v.paginate(self._pool.list_snapshot_ids(), str, limit, after)
            return self._snapshots_response(self._pool.list_snapshots(ids), next_token)
        if source_volume_id:
            snapshots = [snapshot for snapshot in snapshots if snapshot.source_volume_id == source_volume_id]
        page, next_token = v.paginate(snapshots, lambda snapshot: snapshot.id, limit, after)
        return self._snapshots_response(page, next_token)

    @staticmethod
    def _snapshots_response(page: list[Snapshot], next_token: str) -> csi_pb2.ListSnapshotsResponse:
        entries = [
            csi_pb2.ListSnapshotsResponse.Entry(snapshot=snapshot_message(snapshot)) for snapshot in page
        ]
        return csi_pb2.ListSnapshotsResponse(entries=entries, next_token=next_token)

    def GetSnapshot(
        self, request: csi_pb2.GetSnapshotRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetSnapshotResponse:
        snapshot_id = v.required_id(request.snapshot_id, "snapshot_id", "snapshot")
        return csi_pb2.GetSnapshotResponse(snapshot=snapshot_message(self._pool.get_snapshot(snapshot_id)))

    # Not here, so UNIMPLEMENTED (the generated base raises NotImplementedError): ControllerPublishVolume
    # and ControllerUnpublishVolume (node-local volumes need no attach step), ControllerExpandVolume
    # (expansion happens on the node).
