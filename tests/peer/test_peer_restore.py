"""Cross-node restore and clone between two `btrfs-csi serve` processes on two loop pools, peers on
127.0.0.1 with test certificates, driven through the real CSI sockets: the data arrives identical, the
bytes moved are counted, a peer asking for a path or a writable subvolume is refused, and a SIGKILL of
either side mid-transfer leaves no debris and a retry succeeds."""

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from btrfs_core.pool import Pool
from csi.__main__ import start
from csi.config import Config, Peers
from csi.pb import csi_pb2, csi_pb2_grpc, peer_pb2
from tests.conftest import free_port, free_ports, kernel_skip_reason
from tests.core.tree_fingerprint import MiB, fingerprint, populate
from tests.csi.conftest import Client, mount_capability
from tests.peer.conftest import NODES, channel_to, stub
from tests.pki import TestCA
from tests.stress.harness import RETRYABLE, ServedDriver, retry_until_ok
from tests.support import loop_pool

pytestmark = pytest.mark.kernel

METADATA_XATTRS = {"trusted.btrfs-csi", "trusted.btrfs-csi.snapshot"}
GiB = 1 << 30


@dataclass
class Node:
    name: str
    pool: Path
    peer_port: int
    metrics_port: int
    tls_dir: Path
    driver: ServedDriver

    def client(self) -> Client:
        return self.driver.client()

    def restart(self) -> None:
        self.driver.start()
        self.driver.wait_ready()

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0

    def staging(self) -> list[str]:
        return sorted(os.listdir(self.pool / ".staging"))


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Node]]:
    """node-a and node-b: a driver process each on a pool of its own, peers of each other."""
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    pki = tmp_path_factory.mktemp("pki")
    ca = TestCA(pki / "ca")
    ports = free_ports(NODES)
    peers = "static:" + ",".join(f"{name}=127.0.0.1:{port}" for name, port in ports.items())
    with contextlib.ExitStack() as stack:
        found = {}
        for name in NODES:
            pool = stack.enter_context(loop_pool(prefix=f"btrfs-csi-{name}-"))
            tls_dir = ca.issue(name, pki / name)
            metrics_port = free_port()
            extra = (
                *("--node-id", name, "--peer-address", f"127.0.0.1:{ports[name]}"),
                *("--peer-tls-dir", str(tls_dir), "--peers", peers),
                *("--metrics-address", f"127.0.0.1:{metrics_port}"),
            )
            driver = stack.enter_context(ServedDriver(pool, extra))
            found[name] = Node(name, pool, ports[name], metrics_port, tls_dir, driver)
            driver.start()
        for node in found.values():
            node.driver.wait_ready()
        yield found


def create_request(
    name: str, capacity: int, source: csi_pb2.VolumeContentSource
) -> csi_pb2.CreateVolumeRequest:
    return csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=capacity),
        volume_capabilities=[mount_capability()],
        volume_content_source=source,
    )


def from_snapshot(snapshot_id: str) -> csi_pb2.VolumeContentSource:
    return csi_pb2.VolumeContentSource(
        snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id)
    )


def from_volume(volume_id: str) -> csi_pb2.VolumeContentSource:
    return csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=volume_id))


def create_until_ok(node: Node, request: csi_pb2.CreateVolumeRequest) -> csi_pb2.Volume:
    """CreateVolume as the provisioner does it: retried (with a fresh client after a restart) until OK."""
    client = node.client()

    def call() -> csi_pb2.Volume:
        return client.controller.CreateVolume(request, timeout=5).volume

    volume: csi_pb2.Volume = retry_until_ok(call, attempts=3000, pause=0.05)
    return volume


def test_restore_and_clone_from_another_node_are_identical(nodes: dict[str, Node], tmp_path: Path) -> None:
    a, b = nodes["node-a"], nodes["node-b"]
    client_a = a.client()
    source = client_a.create_volume("source", 256 * MiB)
    populate(a.pool / "volumes" / source.volume_id)
    snapshot = client_a.create_snapshot("snap", source.volume_id)
    target = tmp_path / "published"
    client_a.publish(source.volume_id, target)  # a pod on node-a uses the volume while it is cloned
    sent_before, received_before = (
        a.metric("btrfs_csi_peer_transfer_bytes_total"),
        b.metric("btrfs_csi_peer_transfer_bytes_total"),
    )

    clone = create_until_ok(b, create_request("clone", 256 * MiB, from_volume(source.volume_id)))
    expected = fingerprint(a.pool / "snapshots" / snapshot.snapshot_id, METADATA_XATTRS)
    assert fingerprint(b.pool / "volumes" / clone.volume_id, METADATA_XATTRS) == expected
    assert a.staging() == []  # the temporary snapshot of the source volume is gone
    client_a.unpublish(source.volume_id, target)
    delete_volumes(b, clone.volume_id)

    # The snapshot outlives its source volume, and still travels.
    client_a.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=source.volume_id), timeout=30)
    restored = create_until_ok(b, create_request("restored", 300 * MiB, from_snapshot(snapshot.snapshot_id)))
    assert restored.capacity_bytes == 300 * MiB
    assert restored.content_source.snapshot.snapshot_id == snapshot.snapshot_id
    assert [t.segments for t in restored.accessible_topology] == [{"topology.btrfs.csi.dev/node": "node-b"}]
    assert fingerprint(b.pool / "volumes" / restored.volume_id, METADATA_XATTRS) == expected
    # A retry of a finished restore is a plain idempotent create.
    again = b.client().controller.CreateVolume(
        create_request("restored", 300 * MiB, from_snapshot(snapshot.snapshot_id)), timeout=30
    )
    assert again.volume.volume_id == restored.volume_id
    # A restore takes the tuning asked for, as a local one does.
    zstd = create_request("restored-zstd", 256 * MiB, from_snapshot(snapshot.snapshot_id))
    zstd.parameters["compression"] = "zstd"
    tuned = create_until_ok(b, zstd)
    got = b.client().controller.ControllerGetVolume(
        csi_pb2.ControllerGetVolumeRequest(volume_id=tuned.volume_id), timeout=30
    )
    assert got.volume.volume_context["compression"] == "zstd"

    sent = a.metric("btrfs_csi_peer_transfer_bytes_total") - sent_before
    received = b.metric("btrfs_csi_peer_transfer_bytes_total") - received_before
    assert sent == received > 9 * MiB  # three streams of more than the populated files' data
    assert "transfer done" in b.driver.log_text()
    delete_volumes(b, restored.volume_id, tuned.volume_id)


def test_a_source_no_node_holds_is_not_found(nodes: dict[str, Node]) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        nodes["node-b"].client().controller.CreateVolume(
            create_request("from-nowhere", 64 * MiB, from_snapshot("no-such-snapshot")), timeout=30
        )
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND


def test_a_peer_asking_for_a_path_or_a_writable_subvolume_is_refused(nodes: dict[str, Node]) -> None:
    a, b = nodes["node-a"], nodes["node-b"]
    client_a = a.client()
    volume = client_a.create_volume("writable", 64 * MiB)
    snapshot = client_a.create_snapshot("made-writable", volume.volume_id)
    # A snapshot made writable behind the driver's back: its content could change while it is streamed.
    subprocess.run(
        ["btrfs", "property", "set", "-f", str(a.pool / "snapshots" / snapshot.snapshot_id), "ro", "false"],
        check=True,
        timeout=60,
    )
    cases = [
        (peer_pb2.ObjectRef(kind=peer_pb2.SNAPSHOT, id="../volumes/" + volume.volume_id), "INVALID_ARGUMENT"),
        (peer_pb2.ObjectRef(kind=peer_pb2.SNAPSHOT, id=str(a.pool)), "INVALID_ARGUMENT"),
        (peer_pb2.ObjectRef(kind=peer_pb2.SNAPSHOT, id=volume.volume_id), "NOT_FOUND"),
        (peer_pb2.ObjectRef(kind=peer_pb2.SNAPSHOT, id=snapshot.snapshot_id), "INVALID_ARGUMENT"),
    ]
    with channel_to("node-a", a.peer_port, b.tls_dir) as channel:
        for ref, code in cases:
            with pytest.raises(grpc.RpcError) as refused:
                list(stub(channel).Send(peer_pb2.SendRequest(object=ref), timeout=30))
            assert refused.value.code().name == code, ref
    assert a.staging() == []


def start_restore(
    controller: csi_pb2_grpc.ControllerStub, request: csi_pb2.CreateVolumeRequest, staging: Path
) -> None:
    """CreateVolume, retried as the provisioner does, until the receiving node has its transfer in
    staging (the call itself waits for the transfer a while, then answers ABORTED)."""
    deadline = time.monotonic() + 120
    call = controller.CreateVolume.future(request, timeout=60)
    while not os.listdir(staging):
        assert time.monotonic() < deadline, "no transfer in staging within 120 s"
        if call.done():
            try:
                call.result()
            except grpc.RpcError as exc:
                assert exc.code() in RETRYABLE, f"{exc.code().name}: {exc.details()}"
            else:
                raise AssertionError("the restore was done before it was seen: nothing to kill mid-transfer")
            call = controller.CreateVolume.future(request, timeout=60)
        time.sleep(0.01)


def delete_volumes(node: Node, *volume_ids: str) -> None:
    client = node.client()
    for volume_id in volume_ids:
        client.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=30)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def big_snapshot(nodes: dict[str, Node]) -> str:
    """A snapshot on node-a with 320 MiB of incompressible data: a transfer that takes a while."""
    a = nodes["node-a"]
    client = a.client()
    volume = client.create_volume("big", 340 * MiB)
    with open(a.pool / "volumes" / volume.volume_id / "data.bin", "wb") as f:
        for _ in range(320):
            f.write(os.urandom(MiB))
    return client.create_snapshot("big-snap", volume.volume_id).snapshot_id


@pytest.mark.parametrize("killed", ["receiver", "sender"])
def test_sigkill_mid_transfer_then_restart_and_retry(
    nodes: dict[str, Node], big_snapshot: str, killed: str
) -> None:
    a, b = nodes["node-a"], nodes["node-b"]
    name = f"after-{killed}-kill"
    request = create_request(name, 340 * MiB, from_snapshot(big_snapshot))
    start_restore(b.client().controller, request, b.pool / ".staging")
    victim = b if killed == "receiver" else a
    # Stopped first, then checked: the transfer cannot finish between the check and the kill.
    assert victim.driver.process is not None
    victim.driver.process.send_signal(signal.SIGSTOP)
    assert not (b.pool / "volumes" / name).exists(), "the transfer finished before the kill"
    victim.driver.kill()
    victim.restart()
    if killed == "receiver":
        assert b.staging() == []  # the half-received stream is gone at start
    restored = create_until_ok(b, request)
    data = b.pool / "volumes" / restored.volume_id / "data.bin"
    snapshot_data = a.pool / "snapshots" / big_snapshot / "data.bin"
    assert data.stat().st_size == 320 * MiB
    assert _digest(data) == _digest(snapshot_data)
    wait_for(lambda: b.staging() == [] and a.staging() == [], "no transfer debris on either node")
    delete_volumes(b, restored.volume_id)


def _digest(path: Path) -> str:
    return subprocess.run(
        ["sha256sum", str(path)], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()[0]


@contextlib.contextmanager
def local_receiver(
    nodes: dict[str, Node], mount: Path, idle_seconds: float
) -> Iterator[tuple[Pool, csi_pb2_grpc.ControllerStub]]:
    """node-b as a driver in this process on `mount`, with a short idle timeout, restoring from node-a:
    its pool and controller."""
    pool = Pool.open(mount)
    sockets = Path(tempfile.mkdtemp(prefix="peer-"))  # short: unix socket paths are limited
    config = Config(
        socket_path=sockets / "csi.sock",
        node_id="node-b",
        pool=pool.root,
        max_workers=4,
        peer_address=("127.0.0.1", free_port()),
        peer_tls_dir=nodes["node-b"].tls_dir,
        peers=Peers(static=(("node-a", f"127.0.0.1:{nodes['node-a'].peer_port}"),)),
        transfer_idle_seconds=idle_seconds,
    )
    driver = start(config, pool)
    channel = grpc.insecure_channel(config.endpoint)
    try:
        yield pool, csi_pb2_grpc.ControllerStub(channel)
    finally:
        channel.close()
        driver.stop(0)
        shutil.rmtree(sockets, ignore_errors=True)


def test_a_transfer_nobody_asks_for_is_cancelled_and_cleaned(
    nodes: dict[str, Node],
    big_snapshot: str,
    btrfs_mount: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A receiver in this process (a short idle timeout) restoring from node-a, which is stopped mid-
    stream: nobody asks again, so the transfer is cancelled and what it received is removed."""
    a = nodes["node-a"]
    request = create_request("abandoned", 340 * MiB, from_snapshot(big_snapshot))
    assert a.driver.process is not None
    with local_receiver(nodes, btrfs_mount, idle_seconds=3.0) as (pool, controller):
        available = pool.available_capacity()
        start_restore(controller, request, pool.staging_dir)
        a.driver.process.send_signal(signal.SIGSTOP)
        try:
            assert not (pool.volumes_dir / "abandoned").exists()
            with caplog.at_level(logging.WARNING, logger="csi.peer"):
                wait_for(
                    lambda: (
                        any(r.getMessage() == "transfer cancelled" for r in caplog.records)
                        and os.listdir(pool.staging_dir) == []
                        and pool.available_capacity() == available
                    ),
                    "the idle transfer cancelled, its staging removed, its capacity released",
                )
        finally:
            a.driver.process.send_signal(signal.SIGCONT)
        assert not (pool.volumes_dir / "abandoned").exists()
        # Asked again, it starts afresh and completes.
        volume = retry_until_ok(
            lambda: controller.CreateVolume(request, timeout=5).volume, attempts=3000, pause=0.05
        )
        assert (pool.volumes_dir / volume.volume_id / "data.bin").stat().st_size == 320 * MiB
