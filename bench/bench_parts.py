"""Where a CreateVolume's CPU goes under 16 clients, taken apart (issue 14). Run as root (it makes its own
loop-device pools and removes them, also on failure):

    .venv/bin/python -m bench.bench_parts [--rounds 3] [--per-round 800]

- the whole: `btrfs-csi serve` as the chart runs it (INFO log, metrics exporter on, one CPU);
- the gRPC path: the same driver with its pool's create answering the volume it made at its first call:
  the transport, validation, the per-ID lock, the interceptor, the INFO log line and the RPC metrics,
  nothing of the core;
- the core: Pool.create_volume from 16 threads of this process on one CPU, as the driver pins itself, with
  no gRPC: the build, the ledger, the ioctls and the group commit.

Each part's calls/s and CPU per create (user + system of all the threads of its process), the median of
its rounds; the two drivers' rounds alternate. What the whole costs beyond its two parts is what they
cost together in one process on one CPU (thread switches, shared caches).
"""

import argparse
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench.bench_goals import CLIENTS, create_rounds, create_volume, load, throughput
from bench.endpoints import Endpoint, ours, spawned
from btrfs_core.models import Volume
from btrfs_core.pool import Pool
from csi import affinity
from csi.__main__ import main as serve_main
from tests.conftest import free_port
from tests.csi.test_cli import REPO, environment, serve_args
from tests.support import loop_pool

MiB = 1 << 20
GiB = 1 << 30
SERVE_CACHED = "--serve-cached"


def serve_cached(argv: list[str]) -> int:
    """`btrfs-csi serve` with every create answered by the volume its first create made."""
    made: list[Volume] = []
    create = Pool.create_volume

    def cached(self: Pool, *args: Any, **kwargs: Any) -> Volume:
        if not made:
            made.append(create(self, *args, **kwargs))
        return made[0]

    Pool.create_volume = cached  # type: ignore[method-assign]
    return serve_main(argv)


@contextmanager
def grpc_path(size: int) -> Iterator[Endpoint]:
    """serve_cached in a process of its own, on a fresh pool, with the options `ours` gives the driver."""
    with loop_pool(size=size, prefix="btrfs-csi-bench-parts-") as mount:

        def argv(socket: Path) -> list[str]:
            options = ("--log-format", "json", "--metrics-address", f"127.0.0.1:{free_port()}")
            return [
                sys.executable,
                "-m",
                "bench.bench_parts",
                SERVE_CACHED,
                *serve_args(socket, mount, *options),
            ]

        with spawned("gRPC path", argv, mount, mount / "volumes", environment(), REPO) as endpoint:
            yield endpoint


def own_cpu_seconds() -> float:
    used = resource.getrusage(resource.RUSAGE_SELF)
    return used.ru_utime + used.ru_stime


def create_all(pool: Pool, names: list[str]) -> None:
    """Creates the volumes from CLIENTS threads, each taking the next name."""
    pending = iter(names)
    take = threading.Lock()

    def creator() -> None:
        while True:
            with take:
                name = next(pending, None)
            if name is None:
                return
            pool.create_volume(name, MiB)

    threads = [threading.Thread(target=creator) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def core_alone(size: int, rounds: int, per_round: int) -> tuple[list[float], float]:
    """Creates/s of each round and the median CPU ms per create of create_all, its threads on one CPU
    as the driver's (`--cpu auto`)."""
    everywhere = os.sched_getaffinity(0)
    affinity.pin(affinity.AUTO)
    try:
        with loop_pool(size=size, prefix="btrfs-csi-bench-parts-core-") as mount:
            pool = Pool.open(mount)
            rates, cpu = [], []
            for round_number in range(rounds):
                before, started = own_cpu_seconds(), time.perf_counter()
                create_all(pool, [f"core-{round_number}-{i}" for i in range(per_round)])
                rates.append(per_round / (time.perf_counter() - started))
                cpu.append((own_cpu_seconds() - before) * 1000 / per_round)
    finally:
        os.sched_setaffinity(0, everywhere)
    return rates, statistics.median(cpu)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [SERVE_CACHED]:
        return serve_cached(args[1:])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each part")
    parser.add_argument("--per-round", type=int, default=800, help="creates per round")
    options = parser.parse_args(args)
    size = 4 * GiB + 2 * options.rounds * options.per_round * MiB
    print(f"# start: {load()}", file=sys.stderr, flush=True)
    with ours(size) as whole, grpc_path(size) as alone:
        requests = create_rounds("parts", options.per_round)
        rates, cpu = throughput([whole, alone], options.rounds, requests, create_volume)
    core_rates, core_cpu = core_alone(size, options.rounds, options.per_round)
    print(f"# rounds (/s): {rates}, core {core_rates}; {load()}", file=sys.stderr, flush=True)
    rows: list[tuple[str, float, float]] = [
        ("the whole: the served driver", statistics.median(rates[whole.label]), cpu[whole.label]),
        (
            "the gRPC path alone (creates answered by one volume)",
            statistics.median(rates[alone.label]),
            cpu[alone.label],
        ),
        ("the core alone (16 threads, one CPU, no gRPC)", statistics.median(core_rates), core_cpu),
    ]
    print("| part | creates/s | CPU ms per create |")
    print("|---|---:|---:|")
    for what, rate, ms in rows:
        print(f"| {what} | {rate:,.0f} | {ms:.3f} |")
    beyond = cpu[whole.label] - cpu[alone.label] - core_cpu
    print(f"| what the whole costs beyond its parts | | {beyond:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
