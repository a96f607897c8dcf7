"""`btrfs-csi serve --metrics-address`: the driver process serves its own metrics, RPCs included."""

import socket as sockets
import urllib.request
from pathlib import Path

import grpc
import pytest

from csi.pb import csi_pb2, csi_pb2_grpc
from tests.conftest import free_port
from tests.csi.test_cli import assert_refused, run, serve_args, served

MiB = 1 << 20


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text: str = reply.read().decode()
        return text


@pytest.mark.kernel
def test_the_served_driver_exports_volumes_and_rpcs(btrfs_mount: Path, socket_dir: Path) -> None:
    socket, port = socket_dir / "csi.sock", free_port()
    with served(socket, btrfs_mount, "--metrics-address", f"127.0.0.1:{port}") as process:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            request = csi_pb2.CreateVolumeRequest(
                name="pvc-metrics",
                capacity_range=csi_pb2.CapacityRange(required_bytes=8 * MiB),
                volume_capabilities=[
                    csi_pb2.VolumeCapability(
                        mount=csi_pb2.VolumeCapability.MountVolume(),
                        access_mode=csi_pb2.VolumeCapability.AccessMode(
                            mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
                        ),
                    )
                ],
                parameters={"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "ns"},
            )
            csi_pb2_grpc.ControllerStub(channel).CreateVolume(request, timeout=30)
            with pytest.raises(grpc.RpcError):
                csi_pb2_grpc.ControllerStub(channel).DeleteVolume(
                    csi_pb2.DeleteVolumeRequest(volume_id="../x"), timeout=30
                )
        text = scrape(port)
        assert 'btrfs_csi_rpc_duration_seconds_count{code="OK",method="CreateVolume"} 1.0' in text
        assert (
            'btrfs_csi_rpc_duration_seconds_count{code="INVALID_ARGUMENT",method="DeleteVolume"} 1.0' in text
        )
        limit = [line for line in text.splitlines() if line.startswith("btrfs_csi_volume_limit_bytes{")]
        assert len(limit) == 1 and 'pvc_name="data"' in limit[0] and 'pvc_namespace="ns"' in limit[0]
        assert limit[0].endswith(f" {8 * MiB}.0") or limit[0].endswith(f" {8 * MiB}")
        assert "btrfs_csi_build_info{" in text
        process.terminate()
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    with pytest.raises(OSError):
        scrape(port)  # the metrics server stopped with the driver


@pytest.mark.kernel
def test_a_taken_metrics_address_is_refused(btrfs_mount: Path, socket_dir: Path) -> None:
    with sockets.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            *serve_args(socket_dir / "csi.sock", btrfs_mount, "--metrics-address", f"127.0.0.1:{port}")
        )
    assert_refused(result, "--metrics-address")
    assert not (socket_dir / "csi.sock").exists()
