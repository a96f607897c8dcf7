"""A snapshot restored onto another node through the peer channel, against a local `btrfs send | btrfs
receive` pipe of the same snapshot.

    sudo python -m bench.bench_peer        (from the repository root)

Two loop pools of 4 GiB, a `btrfs-csi serve` process on each (node-a, node-b), each on a CPU of its own,
peers of each other on 127.0.0.1 with test certificates (mutual TLS). A volume of 1 GiB of random data
(incompressible) on node-a and a snapshot of it. Timed, interleaved, each to data committed in pool B:
  - pipe:  `btrfs send <snapshot> | btrfs receive <pool B>`, then `sync -f` of pool B;
  - peers: CreateVolume on node-b's CSI socket from the snapshot, retried as the provisioner does
    until OK (the transfer runs in the background: Locate, Send over TLS, pool.transfers.receive, claim).
Prints the medians and the ratio of the peers' throughput to the pipe's; goal >= 0.8x, exit 1 when missed.
"""

import contextlib
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_transfer import DATA_BYTES, POOL_BYTES, ROUNDS, fill, pipe_round, report, seconds
from btrfs_core import subvolume
from csi.pb import csi_pb2
from tests.conftest import free_ports
from tests.csi.conftest import mount_capability
from tests.pki import TestCA
from tests.stress.harness import ServedDriver, retry_until_ok
from tests.support import loop_pool

MiB = 1 << 20
NODES = ("node-a", "node-b")


def restore(driver: ServedDriver, name: str, snapshot_id: str) -> None:
    client = driver.client()
    request = csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=DATA_BYTES + 256 * MiB),
        volume_capabilities=[mount_capability()],
        volume_content_source=csi_pb2.VolumeContentSource(
            snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id)
        ),
    )
    retry_until_ok(lambda: client.controller.CreateVolume(request, timeout=30), attempts=100_000, pause=0.01)


def cpu_flags() -> dict[str, tuple[str, ...]]:
    """Each node's driver on a CPU of its own, as on two machines (left to the scheduler, --cpu auto,
    both could start on the same one); on a single CPU, the default."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return {node: () for node in NODES}
    return {node: ("--cpu", str(cpus[-1 - index])) for index, node in enumerate(NODES)}


def main() -> int:
    ports = free_ports(NODES)
    cpus = cpu_flags()
    peers = "static:" + ",".join(f"{node}=127.0.0.1:{port}" for node, port in ports.items())
    with contextlib.ExitStack() as stack:
        pki = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="btrfs-csi-bench-pki-")))
        ca = TestCA(pki / "ca")
        mounts: dict[str, Path] = {}
        drivers: dict[str, ServedDriver] = {}
        for node in NODES:
            mounts[node] = stack.enter_context(loop_pool(POOL_BYTES, f"btrfs-csi-bench-{node}-"))
            flags = ("--node-id", node, "--peer-address", f"127.0.0.1:{ports[node]}", "--peers", peers)
            tls = ("--peer-tls-dir", str(ca.issue(node, pki / node)))
            drivers[node] = stack.enter_context(ServedDriver(mounts[node], (*flags, *tls, *cpus[node])))
            drivers[node].start()
        for driver in drivers.values():
            driver.wait_ready()
        a = drivers["node-a"].client()
        source = a.create_volume("source", DATA_BYTES + 256 * MiB)
        fill(mounts["node-a"] / "volumes" / source.volume_id / "data")
        snapshot_id = a.create_snapshot("snapshot", source.volume_id).snapshot_id
        snapshot_path = mounts["node-a"] / "snapshots" / snapshot_id
        b = drivers["node-b"].client()
        times: dict[str, list[float]] = {"pipe": [], "peers": []}
        for round_number in range(ROUNDS):
            times["pipe"].append(seconds(lambda: pipe_round(snapshot_path, mounts["node-b"])))
            subvolume.delete(mounts["node-b"] / snapshot_id)
            name = f"restored-{round_number}"
            times["peers"].append(seconds(lambda: restore(drivers["node-b"], name, snapshot_id)))  # noqa: B023
            b.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name), timeout=60)
            os.sync()
    _, met = report(times, "peers")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
