"""The peer service: what another node plugin of this installation may ask of this one.

Every call first checks who is asking: grpc has verified the client certificate against the
installation's CA at the handshake; here its common name must be a node the peer directory knows.
Objects are named by kind and ID, validated like IDs in CSI requests before they become a path; nothing
here writes or deletes anything this node holds (a volume is sent through a temporary read-only snapshot,
which the core makes in staging and removes).
"""

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator

import grpc

from btrfs_core.errors import NotFound
from btrfs_core.models import Source, SourceKind
from btrfs_core.pool import Pool
from csi import validation as v
from csi.errors import CsiError, invalid, status_for
from csi.locks import KeyedTryLock, volume_key
from csi.pb import peer_pb2
from csi.peer.directory import PeerDirectory
from csi.peer.observer import SENT, TransferObserver, Unobserved
from csi.peer.tls import peer_node
from csi.peer.wire import encode_chunk

log = logging.getLogger("csi.peer")

MAX_LOCATE_OBJECTS = 64  # a CreateVolume asks for one source; a bound keeps one call cheap
SERVICE = peer_pb2.DESCRIPTOR.services_by_name["Peer"].full_name
SEND_METHOD = f"/{SERVICE}/Send"
CHUNK_BYTES = 1 << 20  # per gRPC message: few messages per GiB, well below the 4 MiB message limit


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


class PeerServicer:
    def __init__(
        self,
        pool: Pool,
        directory: PeerDirectory,
        locks: KeyedTryLock,
        observer: TransferObserver | None = None,
    ) -> None:
        self._pool = pool
        self._directory = directory
        self._locks = locks  # the CSI servicers' own: a volume is busy whichever call holds it
        self._observer = observer or Unobserved()

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

    def Send(self, request: peer_pb2.SendRequest, context: grpc.ServicerContext) -> Iterator[bytes]:
        """SendChunk messages, each as its chunk of the stream (framed by encode_chunk)."""
        # A stream: the server's interceptor maps errors of unary calls only, so this one maps its own.
        try:
            node = self._authorize(context)
            source = object_source(request.object, "object")
        except CsiError as exc:
            context.abort(exc.code, exc.message)
        transfers = self._pool.transfers
        send = transfers.send_snapshot if source.kind is SourceKind.SNAPSHOT else transfers.send_volume
        log.info("sending", extra={"fields": {"peer": node, source.kind.value: source.id}})
        sent = 0
        try:
            for chunk in _streamed(lambda fd: send(source.id, fd)):
                sent += len(chunk)
                self._observer.moved(SENT, len(chunk))
                yield chunk
        except Exception as exc:
            mapped = status_for(exc)
            code, message = mapped or (
                grpc.StatusCode.INTERNAL,
                f"internal error: {type(exc).__name__}: {exc}",
            )
            log.warning(
                "send failed",
                extra={
                    "fields": {"peer": node, source.kind.value: source.id, "bytes": sent, "error": message}
                },
                exc_info=exc if mapped is None else None,
            )
            context.abort(code, message)
        log.info("sent", extra={"fields": {"peer": node, source.kind.value: source.id, "bytes": sent}})


def peer_handler(servicer: PeerServicer) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """The Peer service of peer.proto, its Send messages framed by hand (csi/peer/wire.py)."""
    handlers = {
        "Locate": grpc.unary_unary_rpc_method_handler(
            servicer.Locate,
            request_deserializer=peer_pb2.LocateRequest.FromString,
            response_serializer=peer_pb2.LocateResponse.SerializeToString,
        ),
        "Send": grpc.unary_stream_rpc_method_handler(
            servicer.Send,
            request_deserializer=peer_pb2.SendRequest.FromString,
            response_serializer=encode_chunk,
        ),
        "ModifyVolume": grpc.unary_unary_rpc_method_handler(
            servicer.ModifyVolume,
            request_deserializer=peer_pb2.ModifyVolumeRequest.FromString,
            response_serializer=peer_pb2.ModifyVolumeResponse.SerializeToString,
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _streamed(send: Callable[[int], int]) -> Iterator[bytes]:
    """The bytes `send` writes into a file descriptor, as chunks: it runs on a thread of its own writing
    into a pipe. When the reader stops early (the peer went away: grpc closes this generator), the pipe's
    reading end closes and the sender's next write fails with EPIPE, which ends the send. The sender's
    exception is raised here once the pipe is drained."""
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            send(write_fd)
        except BaseException as exc:
            failure.append(exc)
        finally:
            os.close(write_fd)

    with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: the default pipe, smaller chunks
        fcntl.fcntl(write_fd, fcntl.F_SETPIPE_SZ, CHUNK_BYTES)
    sender = threading.Thread(target=run, name="peer-send", daemon=True)
    sender.start()
    try:
        while chunk := os.read(read_fd, CHUNK_BYTES):
            yield chunk
    finally:
        os.close(read_fd)
        sender.join()
    if failure:
        raise failure[0]
