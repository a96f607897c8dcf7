"""The peer service: what another node plugin of this installation may ask of this one.

Every call first checks who is asking: grpc has verified the client certificate against the
installation's CA at the handshake; here its common name must be a node the peer directory knows.
Objects are named by kind and ID, validated like IDs in CSI requests before they become a path. The one
call that changes anything is a ControllerModifyVolume handed over by the node it reached.
"""

import logging

import grpc

from btrfs_core.errors import NotFound
from btrfs_core.models import Source, SourceKind
from btrfs_core.pool import Pool
from csi import validation as v
from csi.errors import CsiError, invalid
from csi.locks import KeyedTryLock, volume_key
from csi.pb import peer_pb2, peer_pb2_grpc
from csi.peer.directory import PeerDirectory
from csi.peer.tls import peer_node

log = logging.getLogger("csi.peer")

MAX_LOCATE_OBJECTS = 64  # a CreateVolume asks for one source; a bound keeps one call cheap


def object_source(ref: peer_pb2.ObjectRef, field: str) -> Source:
    """The snapshot or volume a reference names, its ID refused before it can become a path."""
    if ref.kind == peer_pb2.SNAPSHOT:
        return Source(SourceKind.SNAPSHOT, v.required_id(ref.id, f"{field}.id", "snapshot"))
    if ref.kind == peer_pb2.VOLUME:
        return Source(SourceKind.VOLUME, v.required_id(ref.id, f"{field}.id"))
    raise invalid(f"{field}.kind: SNAPSHOT or VOLUME is required")


def object_ref(source: Source) -> peer_pb2.ObjectRef:
    kind = peer_pb2.SNAPSHOT if source.kind is SourceKind.SNAPSHOT else peer_pb2.VOLUME
    return peer_pb2.ObjectRef(kind=kind, id=source.id)


class PeerServicer(peer_pb2_grpc.PeerServicer):
    def __init__(self, pool: Pool, directory: PeerDirectory, locks: KeyedTryLock) -> None:
        self._pool = pool
        self._directory = directory
        self._locks = locks  # the CSI servicers' own: a volume is busy whichever call holds it

    def _authorize(self, context: grpc.ServicerContext) -> str:
        node = peer_node(context)
        if node is None or not self._directory.knows(node):
            raise CsiError(
                grpc.StatusCode.PERMISSION_DENIED,
                f"the client certificate names {node!r}, which is not a node of this installation",
            )
        return node

    def _size(self, source: Source) -> int:
        if source.kind is SourceKind.SNAPSHOT:
            return self._pool.get_snapshot(source.id).size
        return self._pool.get_volume(source.id).capacity

    def Locate(
        self, request: peer_pb2.LocateRequest, context: grpc.ServicerContext
    ) -> peer_pb2.LocateResponse:
        self._authorize(context)
        if len(request.objects) > MAX_LOCATE_OBJECTS:
            raise invalid(f"objects: at most {MAX_LOCATE_OBJECTS} per call")
        held = []
        for i, ref in enumerate(request.objects):
            source = object_source(ref, f"objects[{i}]")
            try:
                size = self._size(source)
            except NotFound:
                continue
            held.append(peer_pb2.HeldObject(object=object_ref(source), size_bytes=size))
        return peer_pb2.LocateResponse(held=held)

    def ModifyVolume(
        self, request: peer_pb2.ModifyVolumeRequest, context: grpc.ServicerContext
    ) -> peer_pb2.ModifyVolumeResponse:
        node = self._authorize(context)
        volume_id = v.required_id(request.volume_id, "volume_id")
        compression = v.compression(v.mutable_parameters(request.mutable_parameters), "mutable_parameters")
        log.info("modify from a peer", extra={"fields": {"peer": node, "volume_id": volume_id}})
        with self._locks.hold(volume_key(volume_id)):
            self._pool.modify_volume(volume_id, compression)  # NotFound: not here either
        return peer_pb2.ModifyVolumeResponse()
