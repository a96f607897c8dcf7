"""Dialling the other node plugins: one TLS channel per node, which must present a certificate naming
that node (peers are dialled by address, so the name to check is given explicitly)."""

import logging
import threading
from collections.abc import Mapping
from concurrent import futures

import grpc

from btrfs_core.errors import NotFound
from btrfs_core.models import Source
from csi.errors import CsiError, unavailable
from csi.pb import peer_pb2, peer_pb2_grpc
from csi.peer.directory import PeerDirectory
from csi.peer.service import SEND_METHOD, object_ref
from csi.peer.tls import TlsMaterial
from csi.peer.wire import decode_chunk

log = logging.getLogger("csi.peer")

LOCATE_TIMEOUT_SECONDS = 5.0  # an unreachable node must not hold up the search on the others
LOCATE_PARALLELISM = 8
MODIFY_TIMEOUT_SECONDS = 30.0  # a modify commits once on the owner: well under a second


class PeerClient:
    def __init__(self, node_id: str, directory: PeerDirectory, tls: TlsMaterial) -> None:
        self._node_id = node_id
        self._directory = directory
        self._credentials = tls.channel_credentials()
        self._lock = threading.Lock()
        self._channels: dict[tuple[str, str], grpc.Channel] = {}

    def _channel(self, node: str, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get((node, address))
            if channel is None:
                channel = grpc.secure_channel(
                    address, self._credentials, options=[("grpc.ssl_target_name_override", node)]
                )
                self._channels[(node, address)] = channel
        return channel

    def _stub(self, node: str, address: str) -> peer_pb2_grpc.PeerStub:
        return peer_pb2_grpc.PeerStub(self._channel(node, address))

    def locate(self, source: Source) -> tuple[str, int] | None:
        """A node other than this one that holds `source`, and the source's size; None when every other
        node answered that it does not. When none holds it but some did not answer, UNAVAILABLE: the
        source may be on one of those (the caller retries), which is not NOT_FOUND."""
        others = sorted(
            (node, address) for node, address in self._directory.addresses().items() if node != self._node_id
        )
        if not others:
            return None
        request = peer_pb2.LocateRequest(objects=[object_ref(source)])
        with futures.ThreadPoolExecutor(min(LOCATE_PARALLELISM, len(others))) as pool:
            answers = list(pool.map(lambda peer: self._ask(peer[0], peer[1], request), others))
        for (node, _), (_, held) in zip(others, answers, strict=True):
            if held is not None:
                return node, held
        silent = [node for (node, _), (answered, _) in zip(others, answers, strict=True) if not answered]
        if silent:
            raise unavailable(
                f"{source.kind.value} {source.id} is on no peer that answered;"
                f" {', '.join(silent)} did not: retry"
            )
        return None

    def _ask(self, node: str, address: str, request: peer_pb2.LocateRequest) -> tuple[bool, int | None]:
        """(whether `node` answered, the size of what it holds or None)."""
        try:
            response = self._stub(node, address).Locate(request, timeout=LOCATE_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            log.warning(
                "peer did not answer",
                extra={
                    "fields": {
                        "peer": node,
                        "address": address,
                        "code": exc.code().name,
                        "error": exc.details(),
                    }
                },
            )
            return False, None
        return True, response.held[0].size_bytes if response.held else None

    def send(self, node: str, source: Source) -> "grpc.CallIterator[memoryview]":
        """The send stream of `source` from `node`, each SendChunk as its data (cancel() on the returned
        call ends it)."""
        address = self._directory.addresses().get(node)
        if address is None:
            raise NotFound(f"node {node} is no longer a peer")
        send = self._channel(node, address).unary_stream(
            SEND_METHOD,
            request_serializer=peer_pb2.SendRequest.SerializeToString,
            response_deserializer=decode_chunk,
        )
        return send(peer_pb2.SendRequest(object=object_ref(source)))

    def modify(self, node: str, volume_id: str, mutable_parameters: Mapping[str, str]) -> None:
        """A ControllerModifyVolume applied on `node`; its refusal is raised with the code it had there."""
        address = self._directory.addresses().get(node)
        if address is None:
            raise unavailable(f"node {node} holds volume {volume_id} but is no longer a peer: retry later")
        request = peer_pb2.ModifyVolumeRequest(volume_id=volume_id, mutable_parameters=mutable_parameters)
        try:
            self._stub(node, address).ModifyVolume(request, timeout=MODIFY_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                code = grpc.StatusCode.UNAVAILABLE  # not applied, as far as we know: retried
            raise CsiError(code, f"node {node}: {exc.details()}") from None

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
