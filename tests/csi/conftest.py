"""Fixtures for the driver tests: a pool (in-memory fake or a real loop-device btrfs), the driver serving
it on a temporary unix socket, and a gRPC client with the three CSI stubs."""

import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from btrfs_core.fake import FakeBackend
from btrfs_core.pool import Pool
from csi.__main__ import Driver, start
from csi.config import Config
from csi.pb import csi_pb2, csi_pb2_grpc

MiB = 1 << 20
GiB = 1 << 30
NODE_ID = "node-1"
Mode = csi_pb2.VolumeCapability.AccessMode.Mode


def mount_capability(mode: int = Mode.SINGLE_NODE_MULTI_WRITER, **mount: Any) -> csi_pb2.VolumeCapability:
    return csi_pb2.VolumeCapability(
        mount=csi_pb2.VolumeCapability.MountVolume(**mount),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),  # type: ignore[arg-type]
    )


def code_of(call: Callable[..., Any], request: Any) -> grpc.StatusCode:
    """The status code of a call (OK when it succeeds)."""
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def error_of(call: Callable[..., Any], request: Any) -> grpc.RpcError:
    try:
        call(request, timeout=30)
    except grpc.RpcError as exc:
        return exc
    raise AssertionError(f"{request.__class__.__name__} succeeded, an error was expected")


def tree(root: Path) -> list[str]:
    """Every path under root, to prove a refused request touched nothing."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@dataclass
class Client:
    identity: csi_pb2_grpc.IdentityStub
    controller: csi_pb2_grpc.ControllerStub
    node: csi_pb2_grpc.NodeStub
    driver: Driver | None = None  # None: the driver runs in another process (tests/stress)

    @property
    def pool(self) -> Pool:
        assert self.driver is not None, "the driver runs in another process: its pool is not here"
        return self.driver.pool

    def create_volume(self, name: str, capacity: int = 16 * MiB, **fields: Any) -> csi_pb2.Volume:
        request = csi_pb2.CreateVolumeRequest(
            name=name,
            capacity_range=csi_pb2.CapacityRange(required_bytes=capacity),
            volume_capabilities=[mount_capability()],
            **fields,
        )
        return self.controller.CreateVolume(request, timeout=30).volume

    def create_snapshot(self, name: str, volume_id: str) -> csi_pb2.Snapshot:
        request = csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=volume_id)
        return self.controller.CreateSnapshot(request, timeout=30).snapshot

    def publish(
        self,
        volume_id: str,
        target: Path,
        readonly: bool = False,
        capability: csi_pb2.VolumeCapability | None = None,
    ) -> None:
        request = csi_pb2.NodePublishVolumeRequest(
            volume_id=volume_id,
            target_path=str(target),
            volume_capability=capability or mount_capability(),
            readonly=readonly,
        )
        self.node.NodePublishVolume(request, timeout=30)

    def unpublish(self, volume_id: str, target: Path) -> None:
        request = csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target))
        self.node.NodeUnpublishVolume(request, timeout=30)


def _fake_pool(tmp_path: Path) -> Pool:
    root = tmp_path / "pool"
    root.mkdir()
    return Pool.open(root, backend=FakeBackend(root))


@pytest.fixture
def kernel_pool(btrfs_mount: Path) -> Pool:
    """A pool on a fresh 1 GiB loop-device btrfs (tests/conftest.py); skipped without root and btrfs."""
    return Pool.open(btrfs_mount)


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.kernel)])
def any_pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pool]:
    """The controller suite runs on both: the fake needs no root, the kernel proves the real thing."""
    if request.param == "fake":
        yield _fake_pool(tmp_path)
        return
    yield request.getfixturevalue("kernel_pool")


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # A short path of its own: unix socket paths are limited to 107 bytes, pytest's tmp_path is long.
    directory = Path(tempfile.mkdtemp(prefix="csi-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def serve(pool: Pool, socket_dir: Path) -> Iterator[Client]:
    """The driver serving `pool` on socket_dir/csi.sock, and a client of it; stopped afterwards."""
    config = Config(socket_path=socket_dir / "csi.sock", node_id=NODE_ID, pool=pool.root, max_workers=4)
    driver = start(config, pool)
    channel = grpc.insecure_channel(config.endpoint)
    try:
        yield Client(
            csi_pb2_grpc.IdentityStub(channel),
            csi_pb2_grpc.ControllerStub(channel),
            csi_pb2_grpc.NodeStub(channel),
            driver,
        )
    finally:
        channel.close()
        driver.stop(0)


@pytest.fixture
def csi(any_pool: Pool, socket_dir: Path) -> Iterator[Client]:
    """A client of the driver serving the fake or the kernel pool."""
    yield from serve(any_pool, socket_dir)


@pytest.fixture
def kcsi(kernel_pool: Pool, socket_dir: Path) -> Iterator[Client]:
    """A client of the driver serving a real btrfs pool (node tests, the data path)."""
    yield from serve(kernel_pool, socket_dir)
