"""A received stream's data is written while it arrives (btrfs_core/writeback.py): the thread's rules,
then a receive on the real kernel."""

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from btrfs_core.backend import KernelBackend
from btrfs_core.errors import BtrfsCoreError
from btrfs_core.models import Source, SourceKind
from btrfs_core.pool import Pool
from btrfs_core.writeback import FLUSH_BYTES, Writeback
from tests.conftest import kernel_skip_reason
from tests.support import eventually, loop_pool

from .oracle import write_random
from .tree_fingerprint import MiB


def test_a_flush_is_due_after_every_so_many_bytes() -> None:
    flushed: list[int] = []
    with Writeback(lambda: flushed.append(1), every=10) as writeback:
        for total in (4, 9, 10):
            writeback.moved(total)
        eventually(lambda: flushed == [1], "one flush at 10 bytes")
        writeback.moved(19)  # the next is due at 20
        writeback.moved(20)
        eventually(lambda: flushed == [1, 1], "the second flush at 20 bytes")
    assert flushed == [1, 1]


def test_flushes_due_while_one_runs_make_one_more_not_several() -> None:
    release = threading.Event()
    started: list[int] = []

    def flush() -> None:
        started.append(1)
        release.wait(10)

    with Writeback(flush, every=1) as writeback:
        writeback.moved(1)
        eventually(lambda: started == [1], "the first flush running")
        for total in range(2, 50):
            writeback.moved(total)
        release.set()
        eventually(lambda: len(started) == 2, "one more flush")
    assert started == [1, 1]


def test_leaving_waits_for_the_flush_in_progress() -> None:
    running = threading.Event()
    finished: list[int] = []

    def flush() -> None:
        running.set()
        time.sleep(0.2)
        finished.append(1)

    with Writeback(flush, every=1) as writeback:
        writeback.moved(1)
        assert running.wait(10)
    assert finished == [1]


def test_a_failed_flush_is_only_a_lost_head_start() -> None:
    calls: list[int] = []

    def flush() -> None:
        calls.append(1)
        raise BtrfsCoreError("sync: Input/output error")

    with Writeback(flush, every=1) as writeback:
        writeback.moved(1)
        eventually(lambda: calls == [1], "the failed flush")
        writeback.moved(2)
        eventually(lambda: calls == [1, 1], "a later flush, the thread alive")


class CountingBackend(KernelBackend):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.write_backs = 0

    def write_back(self) -> None:
        self.write_backs += 1
        super().write_back()


@pytest.mark.kernel
def test_a_receive_writes_its_data_before_its_stream_ends() -> None:
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    size = 3 * FLUSH_BYTES
    with loop_pool(prefix="btrfs-csi-wb-send-") as a, loop_pool(prefix="btrfs-csi-wb-receive-") as b:
        sender = Pool.open(a)
        backend = CountingBackend(b)
        receiver = Pool.open(b, backend=backend)
        sender.create_volume("big", size + 64 * MiB)
        write_random(sender.volume_path("big") / "data", size, seed=7)
        snapshot = sender.create_snapshot("big-snap", "big")
        read_end, write_end = os.pipe()
        sending = threading.Thread(target=lambda: _send(sender, snapshot.id, write_end), daemon=True)
        sending.start()
        flushes_by_end: list[int] = []

        def stream() -> Iterator[bytes]:
            while chunk := os.read(read_end, 1 << 20):
                yield chunk
            flushes_by_end.append(backend.write_backs)

        try:
            source = Source(SourceKind.SNAPSHOT, snapshot.id)
            volume = receiver.transfers.claim(
                receiver.transfers.receive("copy", 0, source, snapshot.size, stream())
            )
        finally:
            os.close(read_end)
            sending.join(timeout=60)
        assert flushes_by_end[0] >= 1  # before the last byte arrived: without Writeback, none
        assert _digest(receiver.volume_path(volume.id) / "data") == _digest(
            sender.volume_path("big") / "data"
        )


def _send(pool: Pool, snapshot_id: str, fd: int) -> None:
    try:
        pool.transfers.send_snapshot(snapshot_id, fd)
    finally:
        os.close(fd)


def _digest(path: Path) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
