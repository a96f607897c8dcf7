"""The ceiling: how many durable creates per second the bare kernel allows at 16 threads.

Run as root (it makes its own loop-device pool, quotas on as the driver has them, and removes it):

    .venv/bin/python -m bench.bench_commit [--rounds 3] [--per-round 400] [--modes serialized,concurrent]

Each call does what the driver's create does to the kernel, nothing else: a level-1 qgroup, a subvolume
born in it (SUBVOL_CREATE_V2 with a qgroup-inherit argument), the limit on the qgroup; then a commit that
makes the call's change durable before the call returns. The modes differ in that commit only:

- grouped: what the driver does (btrfs_core.commit.GroupCommit): START_SYNC + WAIT_SYNC one at a time,
  covering every caller whose change the committed transaction holds (by the generation after it);
  START_SYNC kicked as filesystem.commit does.
- tickets: the group commit before (one at a time, covering the callers that asked before it started).
- concurrent: every thread START_SYNC + WAIT_SYNC on its own (filesystem.commit, kicked).
- *-unkicked: the same without the kicks (a lost wakeup of the transaction kthread then waits for the
  periodic commit: see btrfs_core.commit).
- ioc-sync: every thread BTRFS_IOC_SYNC (writes all dirty data too, then commits in the caller).
- syncfs: every thread syncfs(2).
- none: no commit at all (the kernel's work without durability: the upper bound of any commit scheme).

Rounds alternate the modes (and their order). Per mode: the median creates/s, the commits it took (the
filesystem's generation before and after: one per transaction), and the slowest call, which shows a
commit that waited for the kernel's periodic one. Then the cost of one commit after k creates, one thread.
"""

import argparse
import ctypes
import os
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

from btrfs_core import filesystem, ioctl, quota, subvolume
from btrfs_core.commit import GroupCommit
from btrfs_core.models import QuotaMode
from tests.support import loop_pool

MiB = 1 << 20
THREADS = 16
_LIBC = ctypes.CDLL(None, use_errno=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def syncfs(mount: Path) -> None:
    with subvolume.opened(mount) as fd:
        if _LIBC.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs")


def unkicked_commit(mount: Path) -> int:
    """START_SYNC + WAIT_SYNC as filesystem.commit does, without its kicks."""
    transid = ctypes.c_uint64()
    with subvolume.opened(mount) as fd:
        ioctl.call(fd, ioctl.IOC_START_SYNC, transid, "commit", str(mount))
        ioctl.call(fd, ioctl.IOC_WAIT_SYNC, transid, "commit", str(mount))
    return int(transid.value)


class TicketCommit:
    """The group commit before marks: one commit at a time, covering the callers that asked before it
    started (tickets in the order callers ask)."""

    def __init__(self, sync: Callable[[], object]) -> None:
        self._sync = sync
        self._commit_lock = threading.Lock()
        self._counter_lock = threading.Lock()
        self._requested = 0
        self._done = 0

    def commit(self) -> None:
        with self._counter_lock:
            self._requested += 1
            ticket = self._requested
        with self._commit_lock:
            if self._done >= ticket:
                return
            with self._counter_lock:
                covered = self._requested
            self._sync()
            self._done = covered


def committers(mount: Path) -> dict[str, Callable[[], object]]:
    def current() -> int:
        return filesystem.generation(mount)

    return {
        "grouped": GroupCommit(current, lambda: filesystem.commit(mount)).commit,
        "grouped-unkicked": GroupCommit(current, lambda: unkicked_commit(mount)).commit,
        "tickets": TicketCommit(lambda: filesystem.commit(mount)).commit,
        "tickets-unkicked": TicketCommit(lambda: unkicked_commit(mount)).commit,
        "concurrent": lambda: filesystem.commit(mount),
        "concurrent-unkicked": lambda: unkicked_commit(mount),
        "ioc-sync": lambda: filesystem.sync(mount),
        "syncfs": lambda: syncfs(mount),
        "none": lambda: None,
    }


class Creator:
    """Creates subvolumes as the driver does, each with its level-1 qgroup and limit."""

    def __init__(self, mount: Path) -> None:
        self.mount = mount
        self.parent = mount / "volumes"
        self.parent.mkdir()
        self._next = 0
        self._lock = threading.Lock()

    def create(self) -> None:
        with self._lock:
            self._next += 1
            name = f"v-{self._next}"
        group = quota.LEVEL1 | (1 << 47) | random.getrandbits(47)
        quota.create_qgroup(self.mount, group)
        subvolume.create(self.parent / name, group)
        quota.set_limit(self.mount, group, MiB)


def burst(creator: Creator, commit: Callable[[], object], calls: int) -> tuple[float, int, float]:
    """`calls` durable creates from THREADS threads: creates/s, commits taken, the slowest call (s)."""
    pending = iter(range(calls))
    take = threading.Lock()
    slowest = [0.0] * THREADS

    def worker(index: int) -> None:
        while True:
            with take:
                if next(pending, None) is None:
                    return
            started = time.perf_counter()
            creator.create()
            commit()
            slowest[index] = max(slowest[index], time.perf_counter() - started)

    before = filesystem.generation(creator.mount)
    started = time.perf_counter()
    with ThreadPoolExecutor(THREADS) as pool:
        for done in [pool.submit(worker, i) for i in range(THREADS)]:
            done.result()
    wall = time.perf_counter() - started
    return calls / wall, filesystem.generation(creator.mount) - before, max(slowest)


def batch_costs(creator: Creator, sizes: list[int], samples: int) -> dict[int, tuple[float, float]]:
    """One thread: k creates, then one START_SYNC + WAIT_SYNC; median ms of the commit and of the whole
    per create."""
    costs: dict[int, tuple[list[float], list[float]]] = {k: ([], []) for k in sizes}
    for _ in range(samples):
        for k in sizes:
            started = time.perf_counter()
            for _ in range(k):
                creator.create()
            committing = time.perf_counter()
            filesystem.commit(creator.mount)
            done = time.perf_counter()
            costs[k][0].append((done - committing) * 1000)
            costs[k][1].append((done - started) * 1000 / k)
    return {k: (statistics.median(c), statistics.median(p)) for k, (c, p) in costs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--per-round", type=int, default=400)
    parser.add_argument("--modes", default="grouped,tickets,concurrent,ioc-sync,syncfs,none")
    parser.add_argument("--batch-samples", type=int, default=20, help="0: skip the commit cost by batch")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_commit: needs root (loop devices, mounts)", file=sys.stderr)
        return 2
    modes = args.modes.split(",")
    print(f"# start: {load()}", flush=True)
    # The kicks filesystem.commit issues are counted where they go: each calls filesystem.start_commit.
    with (
        loop_pool(size=8 << 30, prefix="btrfs-csi-bench-commit-") as mount,
        mock.patch.object(filesystem, "start_commit", wraps=filesystem.start_commit) as kicks,
    ):
        quota.enable(mount, QuotaMode.SIMPLE)
        creator = Creator(mount)
        commit = committers(mount)
        rates: dict[str, list[tuple[float, int, float]]] = {mode: [] for mode in modes}
        for round_number in range(args.rounds):
            order = modes if round_number % 2 == 0 else modes[::-1]
            for mode in order:
                kicked = kicks.call_count
                rates[mode].append(burst(creator, commit[mode], args.per_round))
                rate, commits, slowest = rates[mode][-1]
                print(
                    f"# round {round_number} {mode}: {rate:,.0f}/s, {commits} commits, slowest"
                    f" {slowest * 1000:.0f} ms, {kicks.call_count - kicked} kicks",
                    flush=True,
                )
        print(f"\n{THREADS} threads, {args.rounds} rounds of {args.per_round}; {load()}\n")
        print("| commit | creates/s (median) | rounds | creates per commit | slowest call |")
        print("|---|---:|---|---:|---:|")
        for mode, runs in rates.items():
            median = statistics.median(rate for rate, _c, _s in runs)
            per_commit = sum(args.per_round for _ in runs) / max(1, sum(c for _r, c, _s in runs))
            print(
                f"| {mode} | {median:,.0f} | {', '.join(f'{r:,.0f}' for r, _c, _s in runs)} |"
                f" {per_commit:.1f} | {max(s for _r, _c, s in runs) * 1000:,.0f} ms |"
            )
        if args.batch_samples:
            costs = batch_costs(creator, [1, 2, 4, 8, 16, 32], args.batch_samples)
            print(f"\none thread, k creates then one commit; {load()}\n")
            print("| k | commit (ms) | per create, commit included (ms) |")
            print("|---:|---:|---:|")
            for k, (commit_ms, per_create) in costs.items():
                print(f"| {k} | {commit_ms:.2f} | {per_create:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
