"""The driver at scale: start-up, ListVolumes and CreateVolume with 10 and with 10,000 volumes (and as many
snapshots) in one pool, measured through a served `btrfs-csi serve` process.

Run as root (it makes its own sparse loop-device btrfs per scale and removes it, also on failure):

    .venv/bin/python -m bench.bench_scale [--scales 10,10000] [--samples 30] [--starts 3]

For each scale a fresh pool gets that many 1 MiB volumes and one snapshot of each, straight through the
core (Pool API, a few threads sharing commits). Then a driver serves each pool in its own process and a
gRPC client measures (the creates of all pools interleaved, see measure_pools):

- start-up: from the process start to the first Probe that answers ready (median of --starts runs);
- ListVolumes: paging through every volume with max_entries 500 (and ListSnapshots the same);
- CreateVolume: the median latency of --samples new 1 MiB volumes, one after another;
- bare ioctls: the median of as many subvolume create + qgroup limit + commit (START_SYNC + WAIT_SYNC)
  in the same pool (in bench-bare/), interleaved with the creates: the kernel's own growth with the
  pool, beside ours.

The table shows each measure at every scale and the largest over the smallest; the target is that
start-up and CreateVolume stay within 2x between 10 and 10,000 volumes.
"""

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from btrfs_core import filesystem, quota, subvolume
from btrfs_core.pool import Pool
from csi.pb import csi_pb2
from tests.csi.conftest import Client, mount_capability
from tests.stress.harness import RPC_TIMEOUT, ServedDriver, list_snapshots, list_volumes
from tests.support import loop_pool

MiB = 1 << 20
GiB = 1 << 30
PAGE = 500
TARGET_RATIO = 2.0


def pool_size(volumes: int) -> int:
    """A sparse image big enough for the volumes' limits (1 MiB each) and their metadata."""
    return max(2 * GiB, (volumes * 2 * MiB) // GiB * GiB + 2 * GiB)


def populate(mount: Path, volumes: int, threads: int = 4, snapshots: bool = True) -> None:
    """`volumes` 1 MiB volumes, and unless `snapshots` is False one snapshot of each, via the Pool API."""
    pool = Pool.open(mount)

    def make(i: int) -> None:
        pool.create_volume(f"pvc-{i:05d}", MiB)
        if snapshots:
            pool.create_snapshot(f"snap-{i:05d}", f"pvc-{i:05d}")

    with ThreadPoolExecutor(threads) as workers:
        list(workers.map(make, range(volumes)))


@contextmanager
def scaled_pool(volumes: int, snapshots: bool = True) -> Iterator[Path]:
    with loop_pool(pool_size(volumes), prefix="btrfs-csi-scale-") as mount:
        populate(mount, volumes, snapshots=snapshots)
        yield mount


@dataclass
class Measures:
    startup: float  # seconds, median
    list_volumes: float  # seconds for every page
    list_snapshots: float
    create: float  # seconds, median
    bare_create: float | None  # seconds, median of the bare ioctls in the same pool, when measured
    volumes: int
    snapshots: int
    rss_mib: float  # the driver's resident memory after listing everything and the creates


def measure(mount: Path, samples: int, starts: int, bare: bool = False) -> Measures:
    """Start-up, full listings and CreateVolume latency of a driver serving the pool at mount (see
    measure_pools)."""
    return measure_pools([mount], samples, starts, bare)[0]


def measure_pools(mounts: list[Path], samples: int, starts: int, bare: bool = False) -> list[Measures]:
    """Start-up, full listings and CreateVolume latency of a driver serving each pool, with `bare` the
    bare ioctls' latency too (their subvolumes stay in the pool, outside the driver's).

    The creates of all pools are interleaved, one driver serving each pool meanwhile, so that the
    machine's load weighs on every pool alike; and everything written is synced first: measured right
    after a pool of 10,000 volumes is filled, the writeback of its image slowed the commits timed.
    """
    os.sync()
    with ExitStack() as stack:
        drivers = [stack.enter_context(ServedDriver(mount)) for mount in mounts]
        startups: list[list[float]] = [[] for _ in mounts]
        for _ in range(starts):
            for driver, taken in zip(drivers, startups, strict=True):
                driver.start()
                taken.append(driver.wait_ready(timeout=300))
                driver.stop()
        clients, listings = [], []
        for mount, driver in zip(mounts, drivers, strict=True):
            driver.start()
            driver.wait_ready(timeout=300)
            client = driver.client()
            started = time.perf_counter()
            volumes = list_volumes(client, PAGE)
            listed = time.perf_counter() - started
            started = time.perf_counter()
            snapshots = list_snapshots(client, PAGE)
            listings.append((volumes, listed, snapshots, time.perf_counter() - started))
            clients.append(client)
            if bare:
                (mount / "bench-bare").mkdir(exist_ok=True)
        creates: list[list[float]] = [[] for _ in mounts]
        bare_creates: list[list[float]] = [[] for _ in mounts]
        for i in range(samples):
            for n, (mount, client) in enumerate(zip(mounts, clients, strict=True)):
                creates[n].append(timed_create(client, f"bench-{i}"))
                if bare:
                    bare_creates[n].append(timed_bare_create(mount, mount / "bench-bare" / f"bare-{i}"))
        found = []
        for n, driver in enumerate(drivers):
            assert driver.process is not None
            rss = rss_mib(driver.process.pid)
            assert driver.stop() == 0, driver.log_tail()
            volumes, listed, snapshots, listed_snapshots = listings[n]
            found.append(
                Measures(
                    statistics.median(startups[n]),
                    listed,
                    listed_snapshots,
                    statistics.median(creates[n]),
                    statistics.median(bare_creates[n]) if bare else None,
                    len(volumes),
                    len(snapshots),
                    rss,
                )
            )
    return found


def rss_mib(pid: int) -> float:
    """The resident memory of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def cpu_seconds(pid: int) -> float:
    """User and system time of every thread of a process so far (/proc/PID/stat utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_create(client: Client, name: str) -> float:
    request = csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=MiB),
        volume_capabilities=[mount_capability()],
    )
    started = time.perf_counter()
    client.controller.CreateVolume(request, timeout=RPC_TIMEOUT)
    return time.perf_counter() - started


def timed_bare_create(mount: Path, path: Path) -> float:
    """A subvolume with a 1 MiB limit, committed as the driver commits, without the driver."""
    started = time.perf_counter()
    subvolume.create(path)
    quota.set_limit(mount, subvolume.subvolume_id(path), MiB)
    filesystem.commit(mount)
    return time.perf_counter() - started


def table(results: dict[int, Measures]) -> str:
    scales = sorted(results)
    small, large = results[scales[0]], results[scales[-1]]
    rows: list[tuple[str, Callable[[Measures], float], bool]] = [
        ("driver start-up to Probe ready (ms)", lambda m: m.startup * 1000, True),
        ("CreateVolume median latency (ms)", lambda m: m.create * 1000, True),
        ("bare ioctls create+limit+commit median (ms)", lambda m: (m.bare_create or 0) * 1000, False),
        ("driver RSS after listing and creating (MiB)", lambda m: m.rss_mib, False),
        (f"ListVolumes, every page of {PAGE} (ms)", lambda m: m.list_volumes * 1000, False),
        (f"ListSnapshots, every page of {PAGE} (ms)", lambda m: m.list_snapshots * 1000, False),
    ]
    header = f"{'measure':44}" + "".join(f"{f'{n} volumes':>16}" for n in scales) + f"{'ratio':>9}  target"
    lines = [header, "-" * len(header)]
    for label, value, targeted in rows:
        ratio = value(large) / value(small)
        verdict = (
            ("ok" if ratio <= TARGET_RATIO else "MISSED") + f" (<= {TARGET_RATIO:g}x)" if targeted else ""
        )
        cells = "".join(f"{value(results[n]):16.1f}" for n in scales)
        lines.append(f"{label:44}{cells}{ratio:8.2f}x  {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scales", default="10,10000")
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args(argv)
    scales = [int(s) for s in args.scales.split(",")]
    with ExitStack() as pools:
        mounts = []
        for n in scales:
            started = time.perf_counter()
            mounts.append(pools.enter_context(scaled_pool(n)))
            made = time.perf_counter() - started
            print(f"{n} volumes + {n} snapshots: made in {made:.1f} s through the Pool API", flush=True)
        results = dict(zip(scales, measure_pools(mounts, args.samples, args.starts, bare=True), strict=True))
    for n, measures in results.items():
        assert measures.volumes == n and measures.snapshots == n, measures
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
