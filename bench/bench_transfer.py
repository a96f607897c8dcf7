"""A snapshot restored onto another pool, against a local `btrfs send | btrfs receive` pipe.

    sudo python -m bench.bench_transfer        (from the repository root)

Two loop pools of 4 GiB; a volume of 1 GiB of random data (incompressible) in pool A and a snapshot of
it. Timed, interleaved, each to data on disk in pool B:
  - pipe:   `btrfs send <snapshot> | btrfs receive <pool B>`, then `sync -f` of pool B;
  - driver: pool.transfers.send_snapshot in a thread into a pipe, receive + claim from it (commits);
  - parser: the pipe's stream read by Python, its write commands parsed and written with pwrite(2),
    every other command skipped: what a receiver of our own could at best reach (no checksums, no
    clones, no metadata), to judge the choice of `btrfs receive` as the receiver (sendstream.py).
Prints the medians and the driver's ratio to the pipe's throughput; goal >= 0.8x, exit 1 when missed.
"""

import os
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from btrfs_core import sendstream, subvolume
from btrfs_core.models import Source, SourceKind
from btrfs_core.pool import Pool
from tests.support import loop_pool

MiB = 1 << 20
GiB = 1 << 30
DATA_BYTES = GiB
POOL_BYTES = 4 * GiB
ROUNDS = 3
GOAL = 0.8


def seconds(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def fill(path: Path) -> None:
    with open(path, "wb") as f:
        for _ in range(DATA_BYTES // (64 * MiB)):
            f.write(os.urandom(64 * MiB))


def pipe_round(snapshot: Path, into: Path) -> None:
    send = subprocess.Popen(["btrfs", "send", "-q", str(snapshot)], stdout=subprocess.PIPE)
    subprocess.run(["btrfs", "receive", "-q", str(into)], stdin=send.stdout, check=True)
    if send.wait() != 0:
        raise SystemExit("bench: btrfs send failed")
    subprocess.run(["sync", "-f", str(into)], check=True)


def driver_round(a: Pool, b: Pool, snapshot_id: str, name: str) -> None:
    read_end, write_end = os.pipe()
    sendstream.enlarge_pipe(write_end)  # stands for the network: as wide as the pipes the core makes

    def send() -> None:
        try:
            a.transfers.send_snapshot(snapshot_id, write_end)
        finally:
            os.close(write_end)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        b.transfers.claim(
            b.transfers.receive(
                name, 0, Source(SourceKind.SNAPSHOT, snapshot_id), DATA_BYTES + GiB // 4, read_end
            )
        )
    finally:
        os.close(read_end)
        sender.join()


_COMMAND = struct.Struct("<IHI")
_TLV = struct.Struct("<HH")
_WRITE, _OFFSET, _DATA = 15, 18, 19  # BTRFS_SEND_C_WRITE; attributes FILE_OFFSET, DATA


def parser_round(snapshot: Path, scratch: Path) -> None:
    """Write commands only, into one scratch file (paths ignored): a lower bound on a parser's cost."""
    send = subprocess.Popen(["btrfs", "send", "-q", str(snapshot)], stdout=subprocess.PIPE, bufsize=MiB)
    assert send.stdout is not None
    stream = send.stdout
    stream.read(17)  # the stream header
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while header := stream.read(_COMMAND.size):
            length, command, _crc = _COMMAND.unpack(header)
            payload = memoryview(stream.read(length))
            if command != _WRITE:
                continue
            offset, data, position = 0, memoryview(b""), 0
            while position < length:
                kind, size = _TLV.unpack_from(payload, position)
                value = payload[position + _TLV.size : position + _TLV.size + size]
                if kind == _OFFSET:
                    offset = struct.unpack("<Q", value)[0]
                elif kind == _DATA:
                    data = value
                position += _TLV.size + size
            os.pwrite(fd, data, offset)
        os.fsync(fd)
    finally:
        os.close(fd)
        send.wait()


def main() -> int:
    with (
        loop_pool(POOL_BYTES, "btrfs-csi-bench-a-") as mount_a,
        loop_pool(POOL_BYTES, "btrfs-csi-bench-b-") as mount_b,
    ):
        a, b = Pool.open(mount_a), Pool.open(mount_b)
        a.create_volume("source", DATA_BYTES + GiB // 4)
        fill(a.volume_path("source") / "data")
        snapshot = a.create_snapshot("snapshot", "source")
        snapshot_path = a.snapshots_dir / snapshot.id
        times: dict[str, list[float]] = {"pipe": [], "driver": [], "parser": []}
        scratch = Path(tempfile.mkdtemp(dir=mount_b))
        for round_number in range(ROUNDS):
            times["pipe"].append(seconds(lambda: pipe_round(snapshot_path, mount_b)))
            subvolume.delete(mount_b / snapshot.id)
            name = f"restored-{round_number}"
            times["driver"].append(seconds(lambda: driver_round(a, b, snapshot.id, name)))  # noqa: B023
            b.delete_volume(name)
            times["parser"].append(seconds(lambda: parser_round(snapshot_path, scratch / "data")))
            (scratch / "data").unlink()
            b.upkeep.clear_staging()
        os.rmdir(scratch)
    medians, met = report(times, "driver")
    parser = medians["pipe"] / medians["parser"]
    print(f"parser / pipe throughput: {parser:.2f}x (write commands only, into one file)")
    return 0 if met else 1


def report(times: dict[str, list[float]], measured: str) -> tuple[dict[str, float], bool]:
    """Prints the median time and throughput of each way, and `measured`'s throughput against the
    pipe's with the goal; the medians, and whether the goal is met."""
    medians = {what: statistics.median(samples) for what, samples in times.items()}
    for what, median in medians.items():
        print(f"{what:7} {median:6.2f} s  {DATA_BYTES / median / MiB:7.1f} MiB/s  (samples {times[what]})")
    ratio = medians["pipe"] / medians[measured]
    met = ratio >= GOAL
    print(f"{measured} / pipe throughput: {ratio:.2f}x (goal >= {GOAL}x): {'PASS' if met else 'MISS'}")
    return medians, met


if __name__ == "__main__":
    sys.exit(main())
