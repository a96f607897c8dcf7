"""`make demo`: a loop-device btrfs pool made on the spot, `btrfs-csi serve` on it, and a real gRPC
client walking one volume through its whole life. Everything it makes is removed at the end."""

import contextlib
import errno
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc

from csi.pb import csi_pb2 as pb
from csi.pb import csi_pb2_grpc as rpc
from tests.support import loop_pool

MiB = 1 << 20
T = TypeVar("T")
MOUNT = pb.VolumeCapability(
    mount=pb.VolumeCapability.MountVolume(),
    access_mode=pb.VolumeCapability.AccessMode(mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER),
)


def step(title: str, action: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = action()
    print(f"  {(time.perf_counter() - started) * 1000:8.2f} ms  {title}")
    return result


@contextlib.contextmanager
def driver(pool: Path, socket: Path) -> Iterator[grpc.Channel]:
    command = [sys.executable, "-m", "csi", "serve", "--endpoint", f"unix://{socket}"]
    command += ["--node-id", "demo-node", "--pool", str(pool)]
    server = subprocess.Popen(command)
    try:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            identity = rpc.IdentityStub(channel)
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(grpc.RpcError):
                    if identity.Probe(pb.ProbeRequest(), timeout=1).ready.value:
                        break
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("demo: the driver did not become ready")
                time.sleep(0.1)
            yield channel
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def fill(directory: Path) -> int:
    """Writes 64 KiB blocks until the kernel refuses one; returns the bytes it took."""
    written = 0
    with open(directory / "fill", "wb") as f:
        try:
            while True:
                written += f.write(b"\xab" * (64 << 10))
                f.flush()
        except OSError as exc:
            if exc.errno != errno.EDQUOT:
                raise
    return written


def walk(channel: grpc.Channel, workdir: Path) -> None:
    identity, controller, node = rpc.IdentityStub(channel), rpc.ControllerStub(channel), rpc.NodeStub(channel)
    info = step("GetPluginInfo", lambda: identity.GetPluginInfo(pb.GetPluginInfoRequest()))
    print(f"             driver {info.name} {info.vendor_version}")
    capacity = step("GetCapacity", lambda: controller.GetCapacity(pb.GetCapacityRequest()))
    print(f"             {capacity.available_capacity / MiB:.0f} MiB available")

    def create(name: str, size: int, source: pb.VolumeContentSource | None = None) -> pb.Volume:
        request = pb.CreateVolumeRequest(
            name=name,
            capacity_range=pb.CapacityRange(required_bytes=size),
            volume_capabilities=[MOUNT],
            parameters={"csi.storage.k8s.io/pvc/name": name, "csi.storage.k8s.io/pvc/namespace": "demo"},
            volume_content_source=source,
        )
        return step(
            f"CreateVolume {name} ({size // MiB} MiB)", lambda: controller.CreateVolume(request)
        ).volume

    def publish(volume: pb.Volume, target: Path, readonly: bool = False) -> None:
        request = pb.NodePublishVolumeRequest(
            volume_id=volume.volume_id, target_path=str(target), volume_capability=MOUNT, readonly=readonly
        )
        step(f"NodePublishVolume {volume.volume_id} -> {target}", lambda: node.NodePublishVolume(request))

    def unpublish(volume: pb.Volume, target: Path) -> None:
        request = pb.NodeUnpublishVolumeRequest(volume_id=volume.volume_id, target_path=str(target))
        step(f"NodeUnpublishVolume {target}", lambda: node.NodeUnpublishVolume(request))

    def stats(volume: pb.Volume, target: Path) -> None:
        os.sync()  # qgroup counters move at transaction commit; the demo commits to show them now
        request = pb.NodeGetVolumeStatsRequest(volume_id=volume.volume_id, volume_path=str(target))
        reply = step(f"NodeGetVolumeStats {volume.volume_id}", lambda: node.NodeGetVolumeStats(request))
        used = next(u for u in reply.usage if u.unit == pb.VolumeUsage.BYTES)
        print(
            f"             used {used.used / MiB:.2f} of {used.total / MiB:.2f} MiB,"
            f" condition: {reply.volume_condition.message}"
        )

    data = create("pvc-demo-data", 16 * MiB)
    target = workdir / "target-data"
    publish(data, target)
    written = step("write until the limit bites", lambda: fill(target))
    print(f"             EDQUOT after {written / MiB:.2f} MiB of a 16 MiB volume")
    stats(data, target)
    (target / "fill").unlink()
    (target / "hello.txt").write_text("written before the snapshot\n")

    snap_request = pb.CreateSnapshotRequest(name="snap-demo", source_volume_id=data.volume_id)
    snap = step("CreateSnapshot snap-demo", lambda: controller.CreateSnapshot(snap_request)).snapshot
    print(f"             ready {snap.ready_to_use}, {snap.size_bytes // MiB} MiB")
    (target / "hello.txt").write_text("changed after the snapshot\n")

    restored = create(
        "pvc-demo-restored",
        16 * MiB,
        pb.VolumeContentSource(snapshot=pb.VolumeContentSource.SnapshotSource(snapshot_id=snap.snapshot_id)),
    )
    restored_target = workdir / "target-restored"
    publish(restored, restored_target, readonly=True)
    print(f"             restored reads: {(restored_target / 'hello.txt').read_text().strip()!r}")
    try:
        (restored_target / "x").write_text("x")
    except OSError as exc:
        print(f"             a write to the read-only publish fails: {os.strerror(exc.errno or 0)}")
    unpublish(restored, restored_target)

    clone = create(
        "pvc-demo-clone",
        16 * MiB,
        pb.VolumeContentSource(volume=pb.VolumeContentSource.VolumeSource(volume_id=data.volume_id)),
    )
    print(f"             clone of {data.volume_id}: {clone.volume_id}")

    expand = pb.NodeExpandVolumeRequest(
        volume_id=data.volume_id,
        volume_path=str(target),
        capacity_range=pb.CapacityRange(required_bytes=32 * MiB),
    )
    grown = step("NodeExpandVolume to 32 MiB", lambda: node.NodeExpandVolume(expand))
    written = step("write until the limit bites", lambda: fill(target))
    print(f"             now {grown.capacity_bytes // MiB} MiB: EDQUOT after {written / MiB:.2f} MiB")
    stats(data, target)

    listed = step("ListVolumes", lambda: controller.ListVolumes(pb.ListVolumesRequest()))
    print(f"             {[entry.volume.volume_id for entry in listed.entries]}")
    snaps = step("ListSnapshots", lambda: controller.ListSnapshots(pb.ListSnapshotsRequest()))
    print(f"             {[entry.snapshot.snapshot_id for entry in snaps.entries]}")

    unpublish(data, target)
    step(
        "DeleteSnapshot snap-demo",
        lambda: controller.DeleteSnapshot(pb.DeleteSnapshotRequest(snapshot_id=snap.snapshot_id)),
    )
    for volume in (data, restored, clone):
        delete = pb.DeleteVolumeRequest(volume_id=volume.volume_id)
        step(f"DeleteVolume {volume.volume_id}", functools.partial(controller.DeleteVolume, delete))
    left = controller.ListVolumes(pb.ListVolumesRequest()).entries
    print(f"             volumes left: {len(left)}")


def main() -> None:
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (it makes a loop device and mounts btrfs)")
    with tempfile.TemporaryDirectory(prefix="btrfs-csi-demo-") as scratch, loop_pool(256 * MiB) as pool:
        workdir = Path(scratch)
        print(f"pool: a 256 MiB btrfs on a loop device, mounted at {pool}")
        with driver(pool, workdir / "csi.sock") as channel:
            walk(channel, workdir)
        print("driver stopped; pool unmounted and loop device detached")


if __name__ == "__main__":
    main()
