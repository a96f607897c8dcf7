"""A volume whose metadata cannot be read answers INTERNAL, never NOT_FOUND, and is not left out of
ListVolumes: the CO retries a failure, but forgets a volume it is told does not exist."""

import errno
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from btrfs_core.pool import Pool
from csi.pb import csi_pb2
from tests.core.test_read_failures import FailingReads
from tests.csi.conftest import Client, code_of, serve

MiB = 1 << 20


@pytest.fixture
def served(tmp_path: Path, socket_dir: Path) -> Iterator[tuple[Client, FailingReads]]:
    root = tmp_path / "pool"
    root.mkdir()
    backend = FailingReads(root)
    for client in serve(Pool.open(root, backend=backend), socket_dir):
        yield client, backend


@pytest.mark.parametrize("code", [errno.EIO, errno.EPERM], ids=errno.errorcode.get)
def test_an_unreadable_volume_answers_internal(served: tuple[Client, FailingReads], code: int) -> None:
    client, backend = served
    volume = client.create_volume("pvc-damaged", 8 * MiB)
    backend.failing["pvc-damaged"] = code
    get = csi_pb2.ControllerGetVolumeRequest(volume_id=volume.volume_id)
    assert code_of(client.controller.ControllerGetVolume, get) is grpc.StatusCode.INTERNAL
    assert code_of(client.controller.ListVolumes, csi_pb2.ListVolumesRequest()) is grpc.StatusCode.INTERNAL
    backend.failing.clear()
    listed = client.controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=30)
    assert [entry.volume.volume_id for entry in listed.entries] == ["pvc-damaged"]
