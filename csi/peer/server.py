"""Starting the peer side of a node plugin from its configuration: the directory of peers, the TLS
material, the peer service on --peer-address and the client that dials the others."""

from dataclasses import dataclass

import grpc

from btrfs_core.pool import Pool
from csi.config import Config
from csi.locks import KeyedTryLock
from csi.peer.buffers import keep_message_buffers
from csi.peer.client import PeerClient
from csi.peer.directory import PeerDirectory, PeerSetupError, StaticPeers, host_port, kubernetes_peers
from csi.peer.observer import TransferObserver, Unobserved
from csi.peer.service import PeerServicer, peer_handler
from csi.peer.tls import TlsError, TlsMaterial
from csi.peer.transfers import RemoteCreates
from csi.server import ServeError, build_peer_server

PEER_WORKERS = 8  # peers ask rarely; a send holds one worker for its whole stream


@dataclass
class PeerEndpoint:
    server: grpc.Server
    client: PeerClient
    remote: RemoteCreates  # the CreateVolume calls whose source another node holds
    port: int  # the bound port (the configured one, or the one the kernel chose for port 0)

    def stop(self, grace: float) -> None:
        self.server.stop(grace).wait()
        self.client.close()


def peer_directory(config: Config) -> PeerDirectory:
    assert config.peers is not None and config.peer_address is not None
    if config.peers.kubernetes:
        return kubernetes_peers(config.peer_address[1])
    return StaticPeers(dict(config.peers.static))


def start_peer_endpoint(
    config: Config, pool: Pool, locks: KeyedTryLock, observer: TransferObserver | None = None
) -> PeerEndpoint:
    """Serves the peer service on config.peer_address (ServeError, one line, when it cannot)."""
    assert config.peer_address is not None and config.peer_tls_dir is not None
    try:
        tls = TlsMaterial.load(config.peer_tls_dir)
        directory = peer_directory(config)
    except (TlsError, PeerSetupError) as exc:
        raise ServeError(str(exc)) from None
    observer = observer or Unobserved()
    keep_message_buffers()
    server = build_peer_server(
        peer_handler(PeerServicer(pool, directory, locks, observer)), max_workers=PEER_WORKERS
    )
    address = host_port(*config.peer_address)
    try:
        port = server.add_secure_port(address, tls.server_credentials())
    except RuntimeError as exc:
        port, detail = 0, str(exc)
    else:
        detail = "address in use or not local"
    if port == 0:
        raise ServeError(f"--peer-address {address}: cannot listen ({detail})")
    server.start()
    client = PeerClient(config.node_id, directory, tls)
    remote = RemoteCreates(pool, client, observer, config.transfer_idle_seconds, locks)
    return PeerEndpoint(server, client, remote, port)
