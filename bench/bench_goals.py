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
  the median round of each. Goal: ours >= 1.0x the reference's.
- CreateSnapshot, 16 clients, of 16 volumes holding 64 MiB each (written and synced first): snapshots/s.
  Goal >= 1.0x.
- Sequential, one call at a time, samples interleaved: (CreateVolume - Probe) over the bare ioctls
  (subvolume create + qgroup limit + the driver's commit, START_SYNC + WAIT_SYNC) and over the CLI
  (btrfs subvolume create, btrfs qgroup limit, btrfs filesystem sync). Goals <= 1.2x and <= 0.5x.
- At 10,000 volumes: CreateVolume p50 over its p50 at 10 volumes (goal <= 1.5x; both pools served at
  once, their samples interleaved, after a sync), the bare ioctls' p50 there over theirs at 10 (reported:
  the kernel's own growth, create + limit + commit), the driver's RSS, and one Prometheus scrape of the
  pool (as /metrics renders it) over one `btrfs qgroup show --raw` of the same pool (goal <= 0.5x).
  Filling the pool takes minutes; --scale 0 skips it. With BTRFS_CSI_BENCH_SNAPSHOTS=1 every volume also
  gets a snapshot (10,000 + 10,000), and the RSS is the one the issue asks for.

The load average is printed before and after: on a busy machine the figures are noisy.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from bench.bench_core import cli, ms
from bench.bench_scale import measure_pools, populate, scaled_pool
from bench.bench_scrape import measure as measure_scrape
from btrfs_core import filesystem, quota, subvolume
from btrfs_core.pool import Pool
from csi.pb import csi_pb2, csi_pb2_grpc
from tests.conftest import free_port
from tests.csi.conftest import mount_capability
from tests.stress.harness import RPC_TIMEOUT, ServedDriver
from tests.support import loop_pool

MiB = 1 << 20
GiB = 1 << 30
CLIENTS = 16
SNAPSHOT_DATA = 64 * MiB
REPO = Path(__file__).resolve().parents[1]
BUILD_REFERENCE = REPO / "tools" / "csi-driver-host-path"
SNAPSHOTS_ENV = "BTRFS_CSI_BENCH_SNAPSHOTS"
Request = TypeVar("Request")
Stub = csi_pb2_grpc.ControllerStub


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


@dataclass
class Endpoint:
    """A driver on a unix socket, and where the data of a volume id lands (to fill it before snapshots)."""

    label: str
    socket: Path
    root: Path  # the mount point of the driver's btrfs
    data_dir: Callable[[str], Path]
    pid: int

    @contextmanager
    def stubs(self) -> Iterator[tuple[csi_pb2_grpc.IdentityStub, csi_pb2_grpc.ControllerStub]]:
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            yield csi_pb2_grpc.IdentityStub(channel), csi_pb2_grpc.ControllerStub(channel)


def wait_ready(socket: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: the reference driver exited with {process.returncode}")
        if socket.exists():
            with grpc.insecure_channel(f"unix://{socket}") as channel:
                try:
                    csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
        time.sleep(0.01)
    raise SystemExit(f"bench: the reference driver was not ready within {timeout} s")


@contextmanager
def reference(size: int) -> Iterator[Endpoint]:
    """The reference driver, its state directory on a btrfs of its own; stopped and removed afterwards."""
    built = subprocess.run([str(BUILD_REFERENCE)], stdout=subprocess.PIPE, text=True, timeout=1800)
    if built.returncode != 0:
        raise SystemExit(f"bench: {BUILD_REFERENCE} failed ({built.returncode}): no reference to compare")
    binary = Path(built.stdout.strip())
    label = "csi-driver-host-path" if binary.name == "hostpathplugin" else "hostpath-standin"
    with loop_pool(size=size, prefix="btrfs-csi-bench-ref-") as mount, ExitStack() as cleanup:
        workdir = Path(tempfile.mkdtemp(prefix="csi-bench-ref-"))
        cleanup.callback(os.rmdir, workdir)
        socket = workdir / "csi.sock"
        cleanup.callback(socket.unlink, missing_ok=True)
        log = cleanup.enter_context(open(workdir / "driver.log", "wb"))
        cleanup.callback((workdir / "driver.log").unlink)
        state = mount / "state"
        args = ["--endpoint", f"unix://{socket}", "--nodeid", "bench", "--statedir", str(state)]
        process = subprocess.Popen([str(binary), *args], stdout=log, stderr=subprocess.STDOUT)
        cleanup.callback(process.wait, 30)
        cleanup.callback(process.kill)
        wait_ready(socket, process)
        yield Endpoint(label, socket, mount, lambda volume_id: state / volume_id, process.pid)


@contextmanager
def ours(size: int, existing: int = 0, snapshots: bool = False) -> Iterator[Endpoint]:
    """`btrfs-csi serve` as the chart runs it (INFO log, metrics exporter on) on a fresh pool, which holds
    `existing` 1 MiB volumes (and a snapshot of each if `snapshots`) made through the core."""
    with loop_pool(size=size, prefix="btrfs-csi-bench-ours-") as mount:
        populate(mount, existing, snapshots=snapshots)
        metrics = ("--metrics-address", f"127.0.0.1:{free_port()}")
        with ServedDriver(mount, metrics) as driver:
            driver.start()
            driver.wait_ready()
            assert driver.process is not None
            volumes = mount / "volumes"
            yield Endpoint(
                "btrfs-csi", driver.socket, mount, lambda volume_id: volumes / volume_id, driver.process.pid
            )
            assert driver.stop() == 0, driver.log_tail()


def create_request(name: str, capacity: int = MiB) -> csi_pb2.CreateVolumeRequest:
    return csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=capacity),
        volume_capabilities=[mount_capability()],
    )


def create_volume(controller: Stub, request: csi_pb2.CreateVolumeRequest) -> object:
    return controller.CreateVolume(request, timeout=RPC_TIMEOUT)


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


def create_throughput(drivers: list[Endpoint], rounds: int, per_round: int) -> dict[str, list[float]]:
    """Volumes/s of each driver per round; the drivers alternate, and so does which one goes first."""
    rates: dict[str, list[float]] = {driver.label: [] for driver in drivers}
    for round_number in range(rounds):
        order = drivers if round_number % 2 == 0 else drivers[::-1]
        for driver in order:
            requests = [create_request(f"tp-{round_number}-{i}") for i in range(per_round)]
            rates[driver.label].append(per_round / concurrently(driver, requests, create_volume))
    return rates


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


def snapshot_throughput(drivers: list[Endpoint], rounds: int) -> dict[str, list[float]]:
    """Snapshots/s of each driver: CLIENTS clients, each snapshotting its own 64 MiB volume, per round."""
    payload = os.urandom(SNAPSHOT_DATA)  # incompressible: the reference gzips what it archives
    sources = {driver.label: fill(driver, CLIENTS, payload) for driver in drivers}
    rates: dict[str, list[float]] = {driver.label: [] for driver in drivers}
    for round_number in range(rounds):
        order = drivers if round_number % 2 == 0 else drivers[::-1]
        for driver in order:
            requests = [
                csi_pb2.CreateSnapshotRequest(name=f"snap-{round_number}-{i}", source_volume_id=source)
                for i, source in enumerate(sources[driver.label])
            ]
            rates[driver.label].append(len(requests) / concurrently(driver, requests, create_snapshot))
    return rates


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


def throughput_figure(what: str, rates: dict[str, list[float]], drivers: list[Endpoint]) -> Figure:
    """Ours (the first driver) against the other: the median round of each, every round printed."""
    print(f"# {what}, rounds (/s): {rates}; {load()}", file=sys.stderr, flush=True)
    mine, theirs = (statistics.median(rates[driver.label]) for driver in drivers)
    return Figure(what, mine, theirs, "/s", ">= 1.0")


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
    ]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=4, help="CreateVolume throughput rounds per driver")
    parser.add_argument("--per-round", type=int, default=400, help="volumes created per round")
    parser.add_argument("--snapshot-rounds", type=int, default=1, help="CreateSnapshot rounds per driver")
    parser.add_argument("--samples", type=int, default=60, help="sequential samples per operation")
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
        rates = create_throughput(drivers, args.rounds, args.per_round)
        what = f"CreateVolume, {CLIENTS} clients ({args.rounds} rounds of {args.per_round:,})"
        figures.append(throughput_figure(what, rates, drivers))
        rates = snapshot_throughput(drivers, args.snapshot_rounds)
        figures.append(
            throughput_figure(f"CreateSnapshot of 64 MiB volumes, {CLIENTS} clients", rates, drivers)
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
    if args.scale:
        figures += scale_figures(args.scale, 30, os.environ.get(SNAPSHOTS_ENV, "") not in ("", "0"))
    print()
    print(f"issue 14 goals; {load()} (at the end)\n")
    print_figures(figures, other.label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
