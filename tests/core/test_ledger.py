"""The capacity ledger keeps the sum of its promises as volumes come, grow and go, so a create on a pool
far from full reads no volume's usage; near full the exact check decides, as before. Logic, on the fake."""

from pathlib import Path

import pytest

from btrfs_core import capacity
from btrfs_core.capacity import Ledger, Promise
from btrfs_core.errors import InsufficientCapacity
from btrfs_core.fake import FakeBackend
from btrfs_core.pool import Pool

MiB, GiB = 1 << 20, 1 << 30


class CountingBackend(FakeBackend):
    """The fake, counting the reads of every qgroup's usage (one TREE_SEARCH on the kernel)."""

    usage_reads = 0

    def exclusive_all(self) -> dict[int, int]:
        self.usage_reads += 1
        return super().exclusive_all()


@pytest.fixture
def backend(tmp_path: Path) -> CountingBackend:
    root = tmp_path / "pool"
    root.mkdir()
    return CountingBackend(root, size=GiB)


def test_the_ledger_keeps_the_sum_of_its_promises() -> None:
    ledger = Ledger({"a": Promise(10, 1), "b": Promise(20, None)})
    assert ledger.promised == 30
    ledger.put("c", 5)
    ledger.put("a", 40, 1)  # grown: counted once, at its new capacity
    assert ledger.promised == 65
    ledger.pop("b")
    ledger.pop("b")  # absent: nothing to take away
    assert ledger.promised == 45


def test_a_create_far_from_full_reads_no_usage_and_near_full_decides_exactly(
    backend: CountingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each create on a fresh reading of the pool's space: here "a" writes between two creates.
    monkeypatch.setattr(capacity, "SPACE_READING_SECONDS", 0.0)
    pool = Pool.open(backend.root, backend=backend)
    pool.create_volume("a", 100 * MiB)
    pool.create_volume("b", 100 * MiB)
    pool.expand_volume("b", 110 * MiB)
    assert backend.usage_reads == 0
    # "a" writes 90 MiB: 1008 MiB usable (1/64 kept for metadata), 90 used, 10 + 110 not written yet.
    with open(pool.volume_path("a") / "data", "wb") as data:
        data.truncate(90 * MiB)
    room = 1008 * MiB - 90 * MiB - 120 * MiB
    # Fits only because "a" has written most of its promise: the exact check reads the usage, once.
    pool.create_volume("c", room)
    assert backend.usage_reads == 1
    with pytest.raises(InsufficientCapacity):
        pool.create_volume("d", MiB)
    assert backend.usage_reads == 2
    pool.delete_volume("c")
    pool.create_volume("d", MiB)  # the deleted promise is free again, without a read
    assert backend.usage_reads == 2


def test_a_reopened_pool_rebuilds_the_promises_from_the_volumes(backend: CountingBackend) -> None:
    pool = Pool.open(backend.root, backend=backend)
    for name in ("a", "b", "c"):
        pool.create_volume(name, 300 * MiB)
    pool.expand_volume("a", 400 * MiB)
    pool.delete_volume("b")
    # 1008 MiB usable, 700 MiB promised: a restarted driver holds the same promises.
    reopened = Pool.open(backend.root, backend=backend)
    reads = backend.usage_reads
    with pytest.raises(InsufficientCapacity):
        reopened.create_volume("too-big", 308 * MiB + MiB)
    reopened.create_volume("fits", 308 * MiB)
    assert backend.usage_reads == reads + 1  # only the refusal needed the exact check
