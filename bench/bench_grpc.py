"""Latency of the CSI calls through the unix socket, at 10 and 1,000 existing volumes.

Run as root (it makes its own loop-device btrfs per scale and removes it, also on failure):

    .venv/bin/python -m bench.bench_grpc [--scales 10,1000] [--samples 50]

For each scale a fresh pool gets that many 1 MiB volumes (straight through the core), then the driver
serves it in-process on a unix socket and a real gRPC client measures the median of:

- Probe: the gRPC floor (a round trip that does almost nothing);
- CreateVolume: a new, empty volume, durable (committed) before the answer;
- core create: the same through Pool.create_volume directly, no gRPC: what CreateVolume costs at least;
- CreateSnapshot: a read-only snapshot of one volume (a snapshot commits by itself);
- NodePublishVolume: a bind mount of a fresh volume onto a fresh target;
- NodeGetVolumeStats: qgroup usage and health of one published volume.

The table shows each median in ms, the overhead the gRPC layer adds to a create
((CreateVolume - Probe) / core create), and each call at the largest scale over the smallest.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import grpc

from btrfs_core.pool import Pool
from btrfs_core.publish import Publisher
from csi.__main__ import start
from csi.config import Config
from csi.pb import csi_pb2, csi_pb2_grpc
from tests.support import loop_pool

MiB = 1 << 20
GiB = 1 << 30
CAPABILITY = csi_pb2.VolumeCapability(
    mount=csi_pb2.VolumeCapability.MountVolume(),
    access_mode=csi_pb2.VolumeCapability.AccessMode(
        mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
    ),
)
OPERATIONS = (
    "Probe",
    "CreateVolume",
    "core create",
    "CreateSnapshot",
    "NodePublishVolume",
    "NodeGetVolumeStats",
)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def median_of(action: Callable[[int], object], count: int) -> float:
    """Median ms of action(0) ... action(count - 1), each timed alone."""
    samples = []
    for i in range(count):
        started = time.perf_counter()
        action(i)
        samples.append(time.perf_counter() - started)
    return median_ms(samples)


@contextmanager
def served(
    pool: Pool,
) -> Iterator[tuple[csi_pb2_grpc.IdentityStub, csi_pb2_grpc.ControllerStub, csi_pb2_grpc.NodeStub]]:
    with tempfile.TemporaryDirectory(prefix="csi-bench-") as directory:
        config = Config(socket_path=Path(directory) / "csi.sock", node_id="bench", pool=pool.root)
        driver = start(config, pool)
        try:
            with grpc.insecure_channel(config.endpoint) as channel:
                yield (
                    csi_pb2_grpc.IdentityStub(channel),
                    csi_pb2_grpc.ControllerStub(channel),
                    csi_pb2_grpc.NodeStub(channel),
                )
        finally:
            driver.stop(0)


def create_request(name: str) -> csi_pb2.CreateVolumeRequest:
    return csi_pb2.CreateVolumeRequest(
        name=name, capacity_range=csi_pb2.CapacityRange(required_bytes=MiB), volume_capabilities=[CAPABILITY]
    )


def measure(existing: int, samples: int) -> dict[str, float]:
    """Median seconds of each operation on a pool that already holds `existing` volumes."""
    results: dict[str, float] = {}
    # Room for the existing volumes, the measured ones and metadata; the image file is sparse.
    size = max(4 * GiB, (existing + 6 * samples) * MiB * 2)
    with loop_pool(size=size, prefix="btrfs-csi-bench-grpc-") as mountpoint, ExitStack() as cleanup:
        pool = Pool.open(mountpoint)
        for i in range(existing):
            pool.create_volume(f"existing-{i:05d}", MiB)
        identity, controller, node = cleanup.enter_context(served(pool))
        for _ in range(10):  # warm the channel and the worker threads
            identity.Probe(csi_pb2.ProbeRequest())

        probe = csi_pb2.ProbeRequest()
        results["Probe"] = median_of(lambda i: identity.Probe(probe), samples * 4)
        results["CreateVolume"] = median_of(
            lambda i: controller.CreateVolume(create_request(f"grpc-{i}")), samples
        )
        results["core create"] = median_of(lambda i: pool.create_volume(f"core-{i}", MiB), samples)
        source = controller.CreateVolume(create_request("snapshot-source")).volume.volume_id
        results["CreateSnapshot"] = median_of(
            lambda i: controller.CreateSnapshot(
                csi_pb2.CreateSnapshotRequest(name=f"snap-{i}", source_volume_id=source)
            ),
            samples,
        )

        targets = Path(tempfile.mkdtemp(prefix="csi-bench-targets-"))
        cleanup.callback(os.rmdir, targets)
        published: list[tuple[str, Path]] = []

        def unpublish_all() -> None:
            publisher = Publisher(pool)
            for volume_id, target in published:
                publisher.unpublish(volume_id, target)

        cleanup.callback(unpublish_all)
        publish_samples = []
        for i in range(samples):
            volume_id = controller.CreateVolume(create_request(f"publish-{i}")).volume.volume_id
            target = targets / f"t{i}"
            request = csi_pb2.NodePublishVolumeRequest(
                volume_id=volume_id, target_path=str(target), volume_capability=CAPABILITY
            )
            started = time.perf_counter()
            node.NodePublishVolume(request)
            publish_samples.append(time.perf_counter() - started)
            published.append((volume_id, target))
        results["NodePublishVolume"] = median_ms(publish_samples)
        volume_id, target = published[0]
        stats = csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=str(target))
        results["NodeGetVolumeStats"] = median_of(lambda i: node.NodeGetVolumeStats(stats), samples * 4)
    return results


def table(scales: list[int], results: dict[int, dict[str, float]]) -> str:
    small, large = scales[0], scales[-1]
    head = f"| operation | {' | '.join(f'{n:,} vols (ms)' for n in scales)} | {large:,} / {small:,} |"
    lines = [head, "|---|" + "---:|" * (len(scales) + 1)]
    for op in OPERATIONS:
        cells = " | ".join(f"{results[n][op]:.3f}" for n in scales)
        lines.append(f"| {op} | {cells} | {results[large][op] / results[small][op]:.2f}x |")
    overhead = [
        (results[n]["CreateVolume"] - results[n]["Probe"]) / results[n]["core create"] for n in scales
    ]
    lines.append(
        "| (CreateVolume - Probe) / core create | "
        + " | ".join(f"{ratio:.2f}x" for ratio in overhead)
        + " | |"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scales", default="10,1000", help="existing volume counts, comma separated")
    parser.add_argument("--samples", type=int, default=50, help="calls per measured operation")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_grpc: needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    scales = sorted(int(n) for n in args.scales.split(","))
    results = {}
    for n in scales:
        print(f"measuring at {n:,} existing volumes ...", file=sys.stderr)
        results[n] = measure(n, args.samples)
    print(table(scales, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
