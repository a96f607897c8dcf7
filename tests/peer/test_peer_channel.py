"""The peer channel: mutual TLS with the installation's CA, node identity from the certificate, and the
narrow Locate call (by kind and ID, never a path)."""

import logging
import tempfile
from pathlib import Path

import grpc
import pytest

from btrfs_core.fake import FakeBackend
from btrfs_core.models import Source, SourceKind
from btrfs_core.pool import Pool
from csi.__main__ import start
from csi.errors import CsiError
from csi.pb import peer_pb2
from csi.peer.client import PeerClient
from csi.peer.directory import StaticPeers
from csi.peer.tls import TlsMaterial
from csi.server import ServeError
from tests.peer.conftest import Installation, StartNode, channel_to, node_config, stub

MiB = 1 << 20


def locate(*refs: peer_pb2.ObjectRef) -> peer_pb2.LocateRequest:
    return peer_pb2.LocateRequest(objects=list(refs))


def snapshot_ref(snapshot_id: str) -> peer_pb2.ObjectRef:
    return peer_pb2.ObjectRef(kind=peer_pb2.SNAPSHOT, id=snapshot_id)


def test_locate_finds_the_node_that_holds_a_snapshot_or_volume(start_node: StartNode) -> None:
    a, b = start_node("node-a"), start_node("node-b")
    volume = a.pool.create_volume("pvc-1", 32 * MiB)
    snapshot = a.pool.create_snapshot("snap-1", volume.id)
    assert b.peers is not None
    client = b.peers.client
    assert client.locate(Source(SourceKind.SNAPSHOT, snapshot.id)) == ("node-a", snapshot.size)
    assert client.locate(Source(SourceKind.VOLUME, volume.id)) == ("node-a", 32 * MiB)
    assert client.locate(Source(SourceKind.SNAPSHOT, "snap-nowhere")) is None
    # A volume's ID asked for as a snapshot names nothing: a writable subvolume is never a snapshot.
    assert client.locate(Source(SourceKind.SNAPSHOT, volume.id)) is None


def test_locate_answers_only_what_is_held(start_node: StartNode, installation: Installation) -> None:
    a = start_node("node-a")
    volume = a.pool.create_volume("pvc-1", 32 * MiB)
    with channel_to("node-a", installation.ports["node-a"], installation.tls_dirs["node-b"]) as channel:
        response = stub(channel).Locate(
            locate(snapshot_ref("missing"), peer_pb2.ObjectRef(kind=peer_pb2.VOLUME, id=volume.id)),
            timeout=10,
        )
    assert [(held.object.kind, held.object.id, held.size_bytes) for held in response.held] == [
        (peer_pb2.VOLUME, volume.id, 32 * MiB)
    ]


@pytest.mark.parametrize(
    ("ref", "words"),
    [
        (snapshot_ref("../volumes/pvc-1"), "objects[0].id"),
        (snapshot_ref("/etc"), "objects[0].id"),
        (peer_pb2.ObjectRef(kind=peer_pb2.VOLUME, id="a/b"), "objects[0].id"),
        (peer_pb2.ObjectRef(id="pvc-1"), "objects[0].kind"),
    ],
)
def test_paths_and_kindless_objects_are_refused(
    start_node: StartNode, installation: Installation, ref: peer_pb2.ObjectRef, words: str
) -> None:
    start_node("node-a")
    port = installation.ports["node-a"]
    with (
        channel_to("node-a", port, installation.tls_dirs["node-b"]) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        stub(channel).Locate(locate(ref), timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert words in (refused.value.details() or "")


def test_a_certificate_from_another_ca_is_refused_at_the_handshake(
    start_node: StartNode, installation: Installation, tmp_path: Path
) -> None:
    start_node("node-a")
    port = installation.ports["node-a"]
    # Same node name, the right CA to check the server with, but a client certificate another CA signed.
    impostor = installation.stranger_ca.issue("node-b", tmp_path / "impostor")
    (impostor / "ca.crt").write_bytes(installation.ca.cert.read_bytes())
    with channel_to("node-a", port, impostor) as channel, pytest.raises(grpc.RpcError) as refused:
        stub(channel).Locate(locate(snapshot_ref("snap-1")), timeout=10)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    send = peer_pb2.SendRequest(object=snapshot_ref("snap-1"))
    with channel_to("node-a", port, impostor) as channel, pytest.raises(grpc.RpcError) as refused:
        list(stub(channel).Send(send, timeout=10))
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    # The same call with the installation's certificate is answered: the refusal was the certificate.
    with channel_to("node-a", port, installation.tls_dirs["node-b"]) as channel:
        assert not stub(channel).Locate(locate(snapshot_ref("snap-1")), timeout=10).held


def test_a_client_without_certificate_is_refused(start_node: StartNode, installation: Installation) -> None:
    start_node("node-a")
    credentials = grpc.ssl_channel_credentials(root_certificates=installation.ca.cert.read_bytes())
    options = [("grpc.ssl_target_name_override", "node-a")]
    address = f"127.0.0.1:{installation.ports['node-a']}"
    with (
        grpc.secure_channel(address, credentials, options) as channel,
        pytest.raises(grpc.RpcError) as refused,
    ):
        stub(channel).Locate(locate(snapshot_ref("snap-1")), timeout=10)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE


def test_a_signed_certificate_of_no_known_node_is_denied(
    start_node: StartNode, installation: Installation, tmp_path: Path
) -> None:
    start_node("node-a")
    stranger = installation.ca.issue("node-z", tmp_path / "node-z")
    port = installation.ports["node-a"]
    with channel_to("node-a", port, stranger) as channel, pytest.raises(grpc.RpcError) as refused:
        stub(channel).Locate(locate(snapshot_ref("snap-1")), timeout=10)
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "node-z" in (refused.value.details() or "")
    send = peer_pb2.SendRequest(object=snapshot_ref("snap-1"))
    with channel_to("node-a", port, stranger) as channel, pytest.raises(grpc.RpcError) as refused:
        list(stub(channel).Send(send, timeout=10))
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED


def test_the_client_refuses_a_server_that_is_not_the_node_it_dialled(
    start_node: StartNode, installation: Installation, caplog: pytest.LogCaptureFixture
) -> None:
    a = start_node("node-a")
    a.pool.create_snapshot("snap-1", a.pool.create_volume("pvc-1", 32 * MiB).id)
    # A directory that says node-b lives where node-a listens: node-a's certificate does not name node-b.
    wrong = StaticPeers({"node-b": f"127.0.0.1:{installation.ports['node-a']}"})
    client = PeerClient("node-c", wrong, TlsMaterial.load(installation.tls_dirs["node-b"]))
    try:
        with caplog.at_level(logging.WARNING, logger="csi.peer"), pytest.raises(CsiError) as unanswered:
            client.locate(Source(SourceKind.SNAPSHOT, "snap-1"))
    finally:
        client.close()
    # No answer from the only peer: the source may be there, so UNAVAILABLE (retried), not NOT_FOUND.
    assert (
        unanswered.value.code is grpc.StatusCode.UNAVAILABLE and "node-b did not" in unanswered.value.message
    )
    assert any(getattr(r, "fields", {}).get("code") == "UNAVAILABLE" for r in caplog.records)


def test_a_node_does_not_ask_itself(start_node: StartNode) -> None:
    a = start_node("node-a")
    start_node("node-b")  # answers that it does not hold it
    snapshot = a.pool.create_snapshot("snap-1", a.pool.create_volume("pvc-1", 32 * MiB).id)
    assert a.peers is not None
    assert a.peers.client.locate(Source(SourceKind.SNAPSHOT, snapshot.id)) is None


def test_a_peer_port_another_driver_listens_on_is_refused_not_shared(
    start_node: StartNode, installation: Installation, tmp_path: Path
) -> None:
    """gRPC would share it (SO_REUSEPORT): the kernel would then hand each peer's connection to either
    process. A second driver on the same node and port must refuse to start instead."""
    start_node("node-a")
    root = tmp_path / "second"
    root.mkdir()
    sockets = Path(tempfile.mkdtemp(prefix="peer-"))  # short: unix socket paths are limited
    config = node_config(installation, "node-a", root, sockets / "second.sock")
    with pytest.raises(ServeError, match="cannot listen"):
        start(config, Pool.open(root, backend=FakeBackend(root)))
    sockets.rmdir()  # the peer port is bound first: the CSI socket was never made
