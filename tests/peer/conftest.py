"""Fixtures for the peer channel: an installation's CA and a stranger's, and node plugins (in this
process, over fake pools) serving the peer service on 127.0.0.1 with certificates from them."""

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from btrfs_core.fake import FakeBackend
from btrfs_core.pool import Pool
from csi.__main__ import Driver, start
from csi.config import Config, Peers
from csi.pb import peer_pb2_grpc
from tests.conftest import free_ports
from tests.pki import TestCA

NODES = ("node-a", "node-b")


@dataclass(frozen=True)
class Installation:
    ca: TestCA
    stranger_ca: TestCA  # another installation's CA: its certificates must be refused
    tls_dirs: dict[str, Path]  # node -> its --peer-tls-dir, from `ca`
    ports: dict[str, int]

    @property
    def peers(self) -> Peers:
        return Peers(static=tuple((node, f"127.0.0.1:{port}") for node, port in self.ports.items()))


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> tuple[TestCA, TestCA, dict[str, Path]]:
    base = tmp_path_factory.mktemp("pki")
    ca, stranger = TestCA(base / "ca"), TestCA(base / "stranger-ca", "another-installation")
    return ca, stranger, {node: ca.issue(node, base / node) for node in NODES}


@pytest.fixture
def installation(certificates: tuple[TestCA, TestCA, dict[str, Path]]) -> Installation:
    ca, stranger, dirs = certificates
    return Installation(ca, stranger, dirs, free_ports(NODES))


def channel_to(node: str, port: int, tls_dir: Path, name: str | None = None) -> grpc.Channel:
    """A channel to `node`'s peer service presenting the certificate in tls_dir (expecting the server to
    be `name`, default `node`)."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.crt").read_bytes(),
        private_key=(tls_dir / "tls.key").read_bytes(),
        certificate_chain=(tls_dir / "tls.crt").read_bytes(),
    )
    return grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.ssl_target_name_override", name or node)]
    )


def stub(channel: grpc.Channel) -> peer_pb2_grpc.PeerStub:
    return peer_pb2_grpc.PeerStub(channel)


StartNode = Callable[[str], Driver]


def node_config(installation: Installation, node: str, root: Path, socket_path: Path) -> Config:
    """The configuration of `node` of the installation, serving `root`'s pool on socket_path."""
    return Config(
        socket_path=socket_path,
        node_id=node,
        pool=root,
        max_workers=4,
        peer_address=("127.0.0.1", installation.ports[node]),
        peer_tls_dir=installation.tls_dirs[node],
        peers=installation.peers,
    )


@pytest.fixture
def start_node(installation: Installation, tmp_path: Path) -> Iterator[StartNode]:
    """Starts a node plugin of the installation over a fake pool of its own; all stopped afterwards."""
    drivers: list[Driver] = []
    sockets = Path(tempfile.mkdtemp(prefix="peer-"))  # short: unix socket paths are limited

    def start_node(node: str) -> Driver:
        root = tmp_path / node
        root.mkdir()
        config = node_config(installation, node, root, sockets / f"{node}.sock")
        driver = start(config, Pool.open(root, backend=FakeBackend(root)))
        drivers.append(driver)
        return driver

    yield start_node
    for driver in drivers:
        driver.stop(0)
    shutil.rmtree(sockets, ignore_errors=True)
