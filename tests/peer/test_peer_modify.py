"""ControllerModifyVolume at a node that does not hold the volume is applied by the peer that does,
through the peer channel: OK only once applied there, its refusals with the owner's code."""

import grpc
import pytest

from btrfs_core.models import PV_NAME_KEY, Compression
from csi.pb import csi_pb2, csi_pb2_grpc, peer_pb2
from tests.peer.conftest import Installation, StartNode, channel_to, stub

MiB = 1 << 20


def modify(node_socket: str, volume_id: str, **mutable: str) -> grpc.StatusCode:
    request = csi_pb2.ControllerModifyVolumeRequest(volume_id=volume_id, mutable_parameters=mutable)
    with grpc.insecure_channel(f"unix://{node_socket}") as channel:
        try:
            csi_pb2_grpc.ControllerStub(channel).ControllerModifyVolume(request, timeout=30)
        except grpc.RpcError as exc:
            return exc.code()
    return grpc.StatusCode.OK


def test_a_modify_reaching_another_node_is_applied_by_the_owner(start_node: StartNode) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    volume = a.pool.create_volume("pvc-1", 32 * MiB)
    socket_b = str(b.config.socket_path)
    assert modify(socket_b, volume.id, compression="zstd:3", **{PV_NAME_KEY: "pvc-1"}) == grpc.StatusCode.OK
    assert a.pool.get_volume(volume.id).tuning.compression == Compression.parse("zstd:3")
    assert b.pool.list_volumes() == []
    # The owner's refusal comes back with its code.
    assert modify(socket_b, volume.id, compression="zstd:20") == grpc.StatusCode.INVALID_ARGUMENT
    # Held by no node: NOT_FOUND, as before there were peers.
    assert modify(socket_b, "pvc-nowhere", compression="zstd") == grpc.StatusCode.NOT_FOUND


def test_a_peer_modify_is_never_forwarded_again(start_node: StartNode, installation: Installation) -> None:
    start_node("node-a")
    b = start_node("node-b")
    b.pool.create_volume("pvc-on-b", 32 * MiB)
    # Asked of node-a directly as a peer: node-a does not hold it and answers NOT_FOUND itself.
    request = peer_pb2.ModifyVolumeRequest(volume_id="pvc-on-b", mutable_parameters={"compression": "zstd"})
    port, tls_dir = installation.ports["node-a"], installation.tls_dirs["node-b"]
    with channel_to("node-a", port, tls_dir) as channel, pytest.raises(grpc.RpcError) as refused:
        stub(channel).ModifyVolume(request, timeout=10)
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND
    assert b.pool.get_volume("pvc-on-b").tuning.compression is None
