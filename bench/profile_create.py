"""Where the time of a CreateVolume goes inside `btrfs-csi serve`: sampled under 16 clients and one at a time.

Run as root, with py-spy installed (`.venv/bin/pip install py-spy`: a tool, not a dependency):

    .venv/bin/python -m bench.profile_create [--calls 2000] [--sequential 400] [--out DIR]
        [--existing 10000 [--snapshots]]   (a pool already holding that many volumes, and snapshots)

The driver runs as the chart runs it (INFO log, metrics exporter on) on a loop pool made for the run.
py-spy samples every thread of it, idle ones too (`--idle`: a thread waiting for the pool lock or the
commit is where a call's time goes), while the bench's clients create volumes; `perf stat` counts the
driver's CPU time over the same phase where the kernel lets it. The raw stacks (flamegraph.pl and
speedscope read them) are written outside the repository, into --out.

Only the samples of threads serving a call count (their stacks hold gRPC's `_unary_response_in_pool`);
each is put in the component of its innermost frame that a rule below names. The table shows each
component's share of the serving threads' time and, for the sequential phase, its ms per call; the
time a client waits outside the serving thread (client, transport, gRPC's queue) is the client-measured
ms per call minus the serving thread's.
"""

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

from bench.bench_goals import CLIENTS, concurrently, create_request, create_volume, load
from bench.bench_scale import pool_size
from bench.endpoints import ours

GiB = 1 << 30
RATE = 100  # samples per second and thread: more slows the driver visibly on 2 cores
SERVING = "_unary_response_in_pool"
# (file part, function or "", component), tried from the innermost frame outwards; the first match wins.
# A frame that no rule names (btrfs_core/ioctl.py, the backend's one-line delegates) passes to its caller.
RULES: tuple[tuple[str, str, str], ...] = (
    ("btrfs_core/filesystem.py", "commit", "commit: START_SYNC + WAIT_SYNC"),
    ("btrfs_core/commit.py", "", "commit: waiting for a shared commit"),
    ("btrfs_core/subvolume.py", "create", "ioctl: subvolume create"),
    ("btrfs_core/subvolume.py", "rename", "rename into volumes/"),
    ("btrfs_core/subvolume.py", "", "ioctl: subvolume info / is_subvolume"),
    ("btrfs_core/quota.py", "", "ioctl: quota (qgroup create, limit, status)"),
    ("btrfs_core/filesystem.py", "space", "ioctl: pool space (capacity)"),
    ("btrfs_core/filesystem.py", "write_xattr", "xattr: write metadata"),
    ("btrfs_core/filesystem.py", "read_xattr", "xattr: read metadata"),
    ("btrfs_core/filesystem.py", "remove_xattr", "xattr: remove snapshot marker"),
    ("btrfs_core/filesystem.py", "", "statfs, existence checks"),
    ("btrfs_core/pool.py", "create_volume", "pool lock: waiting"),
    ("btrfs_core/capacity.py", "", "capacity ledger"),
    ("btrfs_core/metadata.py", "", "core: other Python (metadata, names, staging)"),
    ("btrfs_core/pool.py", "", "core: other Python (metadata, names, staging)"),
    ("btrfs_core/builder.py", "", "core: other Python (metadata, names, staging)"),
    ("btrfs_core/qgroups.py", "", "core: other Python (metadata, names, staging)"),
    ("btrfs_core/staging.py", "", "core: other Python (metadata, names, staging)"),
    ("logging/", "", "logging"),
    ("csi/logging.py", "", "logging"),
    ("csi/server.py", "_log_rpc", "logging"),
    ("prometheus_client/", "", "RPC metrics"),
    ("btrfs_exporter/", "", "RPC metrics"),
    ("csi/", "", "CSI validation and answer"),
    ("google/protobuf/", "", "gRPC + protobuf (serving thread)"),
    ("grpc/", "", "gRPC + protobuf (serving thread)"),
)


# btrfs ioctl numbers (type 0x94) by name, from linux/btrfs.h, for perf trace's undecoded commands
BTRFS_IOCTLS = {
    8: "SYNC",
    17: "TREE_SEARCH_V2",
    18: "INO_LOOKUP",
    20: "SPACE_INFO",
    22: "WAIT_SYNC",
    23: "SNAP_CREATE_V2",
    24: "SUBVOL_CREATE_V2",  # and START_SYNC, told apart by its direction (READ)
    25: "SUBVOL_GETFLAGS",
    26: "SUBVOL_SETFLAGS",
    30: "DEV_INFO",
    31: "FS_INFO",
    40: "QUOTA_CTL",
    42: "QGROUP_CREATE",
    43: "QGROUP_LIMIT",
    60: "GET_SUBVOL_INFO",
}
# system calls that wait (for work, a lock, a timer): time in them is not work
WAITS = frozenset(
    {"futex", "epoll_wait", "epoll_pwait", "poll", "ppoll", "select", "pselect6", "clock_nanosleep", "wait4"}
)
# `   0.1 ( 0.045 ms): csi-rpc/12 ioctl(fd: 7, cmd: (NONE, 0x94, 0x8, 0)) = 0`; a call that another
# thread's event interrupts is split: `(         ): csi-rpc/12 ioctl(...) ...`, then
# `( 8.2 ms): csi-rpc/12  ... [continued]: ioctl()) = 0`.
STARTED = re.compile(r"\(\s+\): (\S+) (\w+)\((.*) \.\.\.$")
DONE = re.compile(r"\(\s*([\d.]+) ms\): (\S+) +(\.\.\. \[continued\]: )?(\w+)\((.*)")
BTRFS_COMMAND = re.compile(r"cmd: \((\w+), 0x94, (0x[0-9a-f]+),")


def syscall_name(name: str, args: str) -> str:
    command = BTRFS_COMMAND.search(args) if name == "ioctl" else None
    if command is None:
        return name
    direction, number = command.group(1), int(command.group(2), 16)
    if number == 24 and direction == "READ":
        return "ioctl START_SYNC"
    return f"ioctl {BTRFS_IOCTLS.get(number, number)}"


def syscall_times(path: Path) -> dict[str, float]:
    """Milliseconds per system call (a btrfs ioctl by its name) in `perf trace` output."""
    times: dict[str, float] = defaultdict(float)
    pending: dict[str, str] = {}  # thread -> the call it started
    for line in path.read_text(errors="replace").splitlines():
        started = STARTED.search(line)
        if started is not None:
            pending[started.group(1)] = syscall_name(started.group(2), started.group(3))
            continue
        done = DONE.search(line)
        if done is not None:
            duration, thread, continued, name, args = done.groups()
            call = pending.pop(thread, name) if continued else syscall_name(name, args)
            times[call] += float(duration)
    return times


def component(stack: list[str]) -> str:
    for frame in reversed(stack):
        qualified, _, where = frame.partition(" (")
        function = qualified.rpartition(".")[2]  # py-spy writes Class.method
        for part, name, label in RULES:
            if part in where and (not name or function == name):
                return label
    return "other"


def read_raw(path: Path) -> Counter[str]:
    """Samples per component from py-spy's raw output (one `frame;frame;... count` line per stack)."""
    shares: Counter[str] = Counter()
    for line in path.read_text().splitlines():
        stack_text, _, count = line.rpartition(" ")
        stack = stack_text.split(";")
        if any(SERVING in frame for frame in stack):
            shares[component(stack)] += int(count)
    return shares


def profile(pid: int, out: Path, label: str, drive: Callable[[], int]) -> tuple[Counter[str], float, int]:
    """Samples the driver while drive() runs (perf's output beside py-spy's): the samples, seconds, calls."""
    raw = out / f"{label}.raw"
    spy = subprocess.Popen(
        [
            "py-spy",
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(RATE),
            "--idle",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    perfs = []
    if shutil.which("perf"):  # CPU time, and every system call with its duration
        for what in (["stat", "-x,", "-e", "task-clock,context-switches"], ["trace"]):
            perfs.append(
                subprocess.Popen(
                    ["perf", *what, "-p", str(pid), "-o", str(out / f"{label}.perf-{what[0]}")],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
    time.sleep(1)  # let them attach
    started = time.perf_counter()
    calls = drive()
    wall = time.perf_counter() - started
    for tool in [*perfs, spy]:
        tool.send_signal(signal.SIGINT)
        tool.wait(timeout=60)
    return read_raw(raw), wall, calls


def task_clock_ms(perf_text: str) -> float | None:
    for line in perf_text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2] == "task-clock" and fields[0] not in ("", "<not counted>"):
            return float(fields[0])
    return None


def report(out: Path, label: str, samples: Counter[str], wall: float, calls: int, concurrency: int) -> None:
    total = sum(samples.values())
    client_ms = wall * 1000 * concurrency / calls  # what one call takes, seen by its client
    serving_ms = total / RATE * 1000 / calls  # serving-thread time per call
    print(f"\n## {label}: {calls:,} calls in {wall:.1f} s ({calls / wall:,.0f}/s); {load()}")
    stat = out / f"{label}.perf-stat"
    cpu = task_clock_ms(stat.read_text()) if stat.exists() else None
    if cpu is not None:
        print(f"driver CPU (perf task-clock): {cpu / calls:.3f} ms per call")
    print(f"client-measured {client_ms:.3f} ms per call; serving thread {serving_ms:.3f} ms per call\n")
    print("| component | share of serving time | ms per call |")
    print("|---|---:|---:|")
    for name, count in samples.most_common():
        print(f"| {name} | {count / total:.1%} | {serving_ms * count / total:.3f} |")
    print(
        f"| outside the serving thread (client, transport, queue) | |"
        f" {max(0.0, client_ms - serving_ms):.3f} |"
    )
    trace = out / f"{label}.perf-trace"
    if trace.exists():
        times = syscall_times(trace)
        print("\n| system call, all threads (waits left out) | ms per call |")
        print("|---|---:|")
        working = sorted(((t, n) for n, t in times.items() if n not in WAITS), reverse=True)
        for ms_total, name in working[:12]:
            print(f"| {name} | {ms_total / calls:.3f} |")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="CreateVolume calls from 16 clients")
    parser.add_argument("--sequential", type=int, default=400, help="CreateVolume calls one at a time")
    parser.add_argument("--existing", type=int, default=0, help="volumes in the pool before the calls")
    parser.add_argument("--snapshots", action="store_true", help="and a snapshot of each of them")
    parser.add_argument("--out", type=Path, default=Path("/var/cache/btrfs-csi/bench-profile"))
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("py-spy"):
        print("profile_create: needs root and py-spy on PATH (.venv/bin/pip install py-spy)", file=sys.stderr)
        return 2
    out: Path = args.out / time.strftime("%Y%m%dT%H%M%S")
    out.mkdir(parents=True)
    with ours(max(8 * GiB, pool_size(args.existing)), args.existing, args.snapshots) as driver:
        pid = driver.pid

        burst_calls: int = args.calls
        sequential_calls: int = args.sequential

        def burst() -> int:
            concurrently(driver, [create_request(f"burst-{i}") for i in range(burst_calls)], create_volume)
            return burst_calls

        def one_at_a_time() -> int:
            with driver.stubs() as (_identity, controller):
                for i in range(sequential_calls):
                    create_volume(controller, create_request(f"seq-{i}"))
            return sequential_calls

        # perf follows the threads there are when it attaches: have gRPC start all its workers first
        concurrently(driver, [create_request(f"warm-{i}") for i in range(4 * CLIENTS)], create_volume)
        for label, drive, concurrency in (("16-clients", burst, CLIENTS), ("sequential", one_at_a_time, 1)):
            samples, wall, calls = profile(pid, out, label, drive)
            report(out, label, samples, wall, calls, concurrency)
    print(f"\nraw stacks: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
