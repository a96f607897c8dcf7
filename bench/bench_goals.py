"""Issue 14's goals in one run: btrfs-csi beside the reference driver, every figure a ratio with its goal.

Run as root (it makes its own loop-device pools and removes them, also on failure):

    .venv/bin/python -m bench.bench_goals [--rounds 4] [--per-round 400] [--samples 60]

Both drivers run in processes of their own on unix sockets and are driven by the same gRPC client code:
`btrfs-csi serve` as the chart runs it (INFO log, metrics exporter on), and the reference that
tools/csi-driver-host-path builds: csi-driver-host-path itself, or where the module proxy refuses it,
tools/hostpath-standin, which does the reference's per-call work (a directory, the whole state file
rewritten, nothing committed, no quota; a snapshot is a tar.gz of the volume). The reference keeps its
state on a btrfs of its own, made the same way as ours. Every OK of ours is durable: the driver answers
only after the group commit, and nothing here turns that off.

- CreateVolume, 16 clients: volumes/s, rounds alternating between the drivers (and which goes first);
  the median round of each. Goal: ours >= 1.0x the reference's. Under it, each driver's CPU per call
  (user + system, all threads): on 2 CPUs it bounds the rate. Then the same for ControllerGetCapabilities,
  a call that does nothing: the gRPC runtime's own CPU per call (reported, no goal).
- CreateSnapshot, 16 clients, of 16 volumes holding 64 MiB each (written and synced first): snapshots/s.
  Goal >= 1.0x.
- Sequential, one call at a time, samples interleaved: (CreateVolume - Probe) over the bare ioctls
  (subvolume create + qgroup limit + the driver's commit, START_SYNC + WAIT_SYNC) and over the CLI
  (btrfs subvolume create, btrfs qgroup limit, btrfs filesystem sync). Goals <= 1.2x and <= 0.5x.
- CreateVolume, 16 clients, two rounds each once both drivers hold --existing volumes (each made
  through the driver's own CreateVolume first, untimed): the reference rewrites its whole state file per
  call, so its rate falls as volumes accumulate (its rounds above fall too), where ours stays flat.
  Reported, no goal (the goal figure is the first, from empty drivers); measured last, so that the
  volumes it adds weigh on no figure before it.
- At 10,000 volumes: CreateVolume p50 over its p50 at 10 volumes (goal <= 1.5x; both pools served at
  once, their samples interleaved, after a sync), the bare ioctls' p50 there over theirs at 10 (reported:
  the kernel's own growth, create + limit + commit), the driver's RSS, and one Prometheus scrape of the
  pool (as /metrics renders it) over one `btrfs qgroup show --raw` of the same pool (goal <= 0.5x);
  then the same scrape as Prometheus makes it, a GET of the served driver's /metrics (gzip accepted:
  the driver compresses the text), over the show again (both in turn).
  Filling the pool takes minutes; --scale 0 skips it. With BTRFS_CSI_BENCH_SNAPSHOTS=1 every volume also
  gets a snapshot (10,000 + 10,000), and the RSS is the one the issue asks for.

The load average is printed before and after: on a busy machine the figures are noisy.
"""

import argparse
import os
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from bench.bench_core import cli, ms
from bench.bench_scale import cpu_seconds, measure_pools, scaled_pool
from bench.bench_scrape import interleaved_ms, qgroup_show
from bench.bench_scrape import measure as measure_scrape
from bench.endpoints import Endpoint, ours, reference
from btrfs_core import filesystem, quota, subvolume
from btrfs_core.pool import Pool
from csi.pb import csi_pb2, csi_pb2_grpc
from tests.conftest import free_port
from tests.csi.conftest import mount_capability
from tests.stress.harness import RPC_TIMEOUT, served

MiB = 1 << 20
GiB = 1 << 30
CLIENTS = 16
SNAPSHOT_DATA = 64 * MiB
SNAPSHOTS_ENV = "BTRFS_CSI_BENCH_SNAPSHOTS"
Request = TypeVar("Request")
Stub = csi_pb2_grpc.ControllerStub


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def create_request(name: str, capacity: int = MiB) -> csi_pb2.CreateVolumeRequest:
    return csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=capacity),
        volume_capabilities=[mount_capability()],
    )


def create_rounds(
    prefix: str, per_round: int
) -> Callable[[Endpoint, int], list[csi_pb2.CreateVolumeRequest]]:
    """throughput()'s requests for CreateVolume: per_round new names each round, the same for every
    driver."""
    return lambda _driver, r: [create_request(f"{prefix}-{r}-{i}") for i in range(per_round)]


def create_volume(controller: Stub, request: csi_pb2.CreateVolumeRequest) -> object:
    return controller.CreateVolume(request, timeout=RPC_TIMEOUT)


def capabilities(controller: Stub, request: csi_pb2.ControllerGetCapabilitiesRequest) -> object:
    return controller.ControllerGetCapabilities(request, timeout=RPC_TIMEOUT)


def create_snapshot(controller: Stub, request: csi_pb2.CreateSnapshotRequest) -> object:
    return controller.CreateSnapshot(request, timeout=600)  # the reference archives 64 MiB per call


def concurrently(
    endpoint: Endpoint, requests: Sequence[Request], send: Callable[[Stub, Request], object]
) -> float:
    """Sends the requests from CLIENTS threads, each on a channel of its own; returns the wall seconds."""
    pending = iter(requests)
    take = threading.Lock()

    def client() -> None:
        with endpoint.stubs() as (_identity, controller):
            while True:
                with take:
                    request = next(pending, None)
                if request is None:
                    return
                send(controller, request)

    with ThreadPoolExecutor(CLIENTS) as clients:
        started = time.perf_counter()
        for done in [clients.submit(client) for _ in range(CLIENTS)]:
            done.result()
        return time.perf_counter() - started


def throughput(
    drivers: list[Endpoint],
    rounds: int,
    make: Callable[[Endpoint, int], list[Request]],
    send: Callable[[Stub, Request], object],
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Calls/s of each driver per round (`make(driver, round)`: its requests), the drivers alternating and
    which goes first too; and each driver's median CPU ms per call (all its threads, user and system)."""
    rates: dict[str, list[float]] = {driver.label: [] for driver in drivers}
    cpu: dict[str, list[float]] = {driver.label: [] for driver in drivers}
    for round_number in range(rounds):
        for driver in drivers if round_number % 2 == 0 else drivers[::-1]:
            requests = make(driver, round_number)
            before = cpu_seconds(driver.pid)
            rates[driver.label].append(len(requests) / concurrently(driver, requests, send))
            cpu[driver.label].append((cpu_seconds(driver.pid) - before) * 1000 / len(requests))
    return rates, {label: statistics.median(each) for label, each in cpu.items()}


def fill(endpoint: Endpoint, count: int, payload: bytes) -> list[str]:
    """`count` volumes with `payload` written into each, then synced (so no snapshot pays the flush)."""
    ids = []
    with endpoint.stubs() as (_identity, controller):
        for i in range(count):
            request = create_request(f"snap-source-{i}", 2 * len(payload))
            volume_id = controller.CreateVolume(request, timeout=RPC_TIMEOUT).volume.volume_id
            with open(endpoint.data_dir(volume_id) / "data", "wb") as f:
                f.write(payload)
            ids.append(volume_id)
    os.sync()
    return ids


def snapshot_throughput(
    drivers: list[Endpoint], rounds: int
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """throughput() of CreateSnapshot: CLIENTS clients, each snapshotting its own 64 MiB volume, per round."""
    payload = os.urandom(SNAPSHOT_DATA)  # incompressible: the reference gzips what it archives
    sources = {driver.label: fill(driver, CLIENTS, payload) for driver in drivers}

    def requests(driver: Endpoint, round_number: int) -> list[csi_pb2.CreateSnapshotRequest]:
        return [
            csi_pb2.CreateSnapshotRequest(name=f"snap-{round_number}-{i}", source_volume_id=source)
            for i, source in enumerate(sources[driver.label])
        ]

    return throughput(drivers, rounds, requests, create_snapshot)


def sequential(endpoint: Endpoint, mount: Path, samples: int) -> dict[str, float]:
    """Median ms of Probe, CreateVolume, the bare ioctls and the CLI sequence, samples interleaved."""
    bare = mount / "bench-bare"
    bare.mkdir()
    times: dict[str, list[float]] = {"Probe": [], "CreateVolume": [], "ioctls": [], "CLI": []}
    with endpoint.stubs() as (identity, controller):
        for _ in range(20):  # warm the channel and the worker threads
            identity.Probe(csi_pb2.ProbeRequest())

        def ioctls(i: int) -> None:
            subvolume.create(bare / f"ioctl-{i}")
            quota.set_limit(mount, subvolume.subvolume_id(bare / f"ioctl-{i}"), MiB)
            filesystem.commit(mount)  # the driver's commit, not BTRFS_IOC_SYNC (it also writes all data)

        def cli_sequence(i: int) -> None:
            cli("btrfs", "subvolume", "create", str(bare / f"cli-{i}"))
            cli("btrfs", "qgroup", "limit", str(MiB), str(bare / f"cli-{i}"))
            cli("btrfs", "filesystem", "sync", str(mount))

        for i in range(samples):
            times["Probe"].append(ms(lambda: identity.Probe(csi_pb2.ProbeRequest())))
            times["CreateVolume"].append(
                ms(lambda: controller.CreateVolume(create_request(f"seq-{i}"), timeout=RPC_TIMEOUT))  # noqa: B023
            )
            times["ioctls"].append(ms(lambda: ioctls(i)))  # noqa: B023 (called at once)
            if i % 3 == 0:  # the CLI is slow and steady: a third of the samples
                times["CLI"].append(ms(lambda: cli_sequence(i)))  # noqa: B023
    return {what: statistics.median(values) for what, values in times.items()}


@dataclass
class Figure:
    what: str
    ours: float
    theirs: float
    unit: str
    goal: str  # ">= 1.0" or "<= 1.2"; empty: reported, no goal

    @property
    def ratio(self) -> float:
        return self.ours / self.theirs

    @property
    def verdict(self) -> str:
        if not self.goal:
            return ""
        bound = float(self.goal.split()[1])
        met = self.ratio >= bound if self.goal.startswith(">=") else self.ratio <= bound
        return "PASS" if met else "MISS"


def throughput_figures(
    what: str,
    measured: tuple[dict[str, list[float]], dict[str, float]],
    drivers: list[Endpoint],
    goal: str = ">= 1.0",
) -> list[Figure]:
    """Ours (the first driver) against the other: the median round of each, every round printed; and
    the CPU each driver spent per call, which bounds the rate on a machine this small."""
    rates, cpu = measured
    print(f"# {what}, rounds (/s): {rates}; CPU ms per call {cpu}; {load()}", file=sys.stderr, flush=True)
    mine, theirs = (statistics.median(rates[driver.label]) for driver in drivers)
    mine_cpu, theirs_cpu = (cpu[driver.label] for driver in drivers)
    return [
        Figure(what, mine, theirs, "/s", goal),
        Figure("  driver CPU per call (user + system)", mine_cpu, theirs_cpu, "ms", ""),
    ]


def populated_throughput(drivers: list[Endpoint], existing: int, per_round: int) -> list[Figure]:
    """throughput() of CreateVolume, two rounds each, once every driver holds at least `existing`
    volumes (those it lacks made first, untimed, by the same 16 clients)."""
    for driver in drivers:
        lacking = existing - driver.volume_count()
        concurrently(driver, [create_request(f"existing-{i}") for i in range(lacking)], create_volume)
    measured = throughput(drivers, 2, create_rounds("at", per_round), create_volume)
    what = f"CreateVolume, {CLIENTS} clients, from {existing:,} volumes in each driver"
    return throughput_figures(what, measured, drivers, goal="")


def print_figures(figures: list[Figure], reference_label: str) -> None:
    print("| figure | btrfs-csi | against | ratio | goal | |")
    print("|---|---:|---:|---:|---|---|")
    for f in figures:
        goal = f"{f.goal}x" if f.goal else "reported"
        print(
            f"| {f.what} | {f.ours:,.2f} {f.unit} | {f.theirs:,.2f} {f.unit} | {f.ratio:.2f}x"
            f" | {goal} | {f.verdict} |"
        )
    print(f"\nreference: {reference_label}")


def scale_figures(scale: int, samples: int, snapshots: bool) -> list[Figure]:
    """p50 at `scale` volumes vs 10, the driver's RSS there, and a scrape vs `btrfs qgroup show`."""
    with scaled_pool(10, snapshots=snapshots) as few:
        started = time.perf_counter()
        with scaled_pool(scale, snapshots=snapshots) as mount:
            filled = time.perf_counter() - started
            small, large = measure_pools([few, mount], samples, starts=1, bare=True)
            scrape = measure_scrape(Pool.open(mount), repeat=15)
            served_scrape, served_show = http_scrape(mount, repeat=15)
    made = f"{scale:,} volumes" + (f" + {scale:,} snapshots" if snapshots else "")
    print(f"# {made} made in {filled:.0f} s; {load()}", file=sys.stderr, flush=True)
    return [
        Figure(
            f"CreateVolume p50, {scale:,} vs 10 volumes",
            large.create * 1000,
            small.create * 1000,
            "ms",
            "<= 1.5",
        ),
        Figure(
            f"bare ioctls create+limit+commit p50, {scale:,} vs 10 volumes",
            (large.bare_create or 0) * 1000,
            (small.bare_create or 0) * 1000,
            "ms",
            "",
        ),
        Figure(f"driver RSS, {made} vs 10", large.rss_mib, small.rss_mib, "MiB", ""),
        Figure(f"scrape vs `btrfs qgroup show`, {made}", scrape["scrape"], scrape["show"], "ms", "<= 0.5"),
        Figure(
            f"  GET /metrics of the served driver (gzip), {made}", served_scrape, served_show, "ms", "<= 0.5"
        ),
    ]


def http_scrape(mount: Path, repeat: int) -> tuple[float, float]:
    """Median ms of a scrape as Prometheus makes it, a GET of the served driver's /metrics accepting
    gzip (the driver compresses), the body read whole; and of `btrfs qgroup show`, taken in turn."""
    address = f"127.0.0.1:{free_port()}"
    request = urllib.request.Request(f"http://{address}/metrics", headers={"Accept-Encoding": "gzip"})

    def scrape() -> None:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()

    with served(mount, "--metrics-address", address) as driver:
        scrape()  # the first reads every object into the collector's index
        scraped, shown = interleaved_ms([scrape, lambda: qgroup_show(mount)], repeat)
        assert driver.stop() == 0, driver.log_tail()
    return scraped, shown


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4, help="CreateVolume throughput rounds per driver")
    parser.add_argument("--per-round", type=int, default=400, help="volumes created per round")
    parser.add_argument("--snapshot-rounds", type=int, default=1, help="CreateSnapshot rounds per driver")
    parser.add_argument("--samples", type=int, default=60, help="sequential samples per operation")
    parser.add_argument(
        "--existing", type=int, default=2_000, help="volumes each driver holds for the last rounds (0: skip)"
    )
    parser.add_argument("--scale", type=int, default=10_000, help="volumes of the large pool (0: skip)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_goals: needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    print(f"# start: {load()}", file=sys.stderr, flush=True)
    figures: list[Figure] = []
    size = 16 * GiB  # sparse: 16 x 64 MiB sources, the volumes' limits and the reference's archives
    with ours(size) as btrfs_csi, reference(size) as other:
        drivers = [btrfs_csi, other]
        measured = throughput(drivers, args.rounds, create_rounds("tp", args.per_round), create_volume)
        what = f"CreateVolume, {CLIENTS} clients ({args.rounds} rounds of {args.per_round:,})"
        figures += throughput_figures(what, measured, drivers)
        # The gRPC floor: a call that does nothing, so its CPU is each runtime's own cost per call.
        floor = [csi_pb2.ControllerGetCapabilitiesRequest()] * (10 * args.per_round)
        measured = throughput(drivers, 2, lambda _driver, _r: floor, capabilities)
        what = f"ControllerGetCapabilities, {CLIENTS} clients (the gRPC floor)"
        figures += throughput_figures(what, measured, drivers, goal="")
        measured = snapshot_throughput(drivers, args.snapshot_rounds)
        figures += throughput_figures(
            f"CreateSnapshot of 64 MiB volumes, {CLIENTS} clients", measured, drivers
        )
        seq = sequential(btrfs_csi, btrfs_csi.root, args.samples)
        print(f"# sequential medians (ms): {seq}; {load()}", file=sys.stderr, flush=True)
        ours_only = seq["CreateVolume"] - seq["Probe"]
        figures.append(
            Figure(
                "(CreateVolume - Probe) vs ioctls create+limit+commit",
                ours_only,
                seq["ioctls"],
                "ms",
                "<= 1.2",
            )
        )
        figures.append(
            Figure("(CreateVolume - Probe) vs CLI create+limit+sync", ours_only, seq["CLI"], "ms", "<= 0.5")
        )
        if args.existing:
            figures += populated_throughput(drivers, args.existing, args.per_round)
    if args.scale:
        figures += scale_figures(args.scale, 30, os.environ.get(SNAPSHOTS_ENV, "") not in ("", "0"))
    print()
    print(f"issue 14 goals; {load()} (at the end)\n")
    print_figures(figures, other.label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
