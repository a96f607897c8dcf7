"""What a CreateVolume costs in calls to the filesystem: a new volume's metadata is written once and
its answer built from what was written, with nothing read back or removed; creates in a row share a
reading of the pool's space. Logic, on the fake."""

from collections import Counter
from pathlib import Path

import pytest

from btrfs_core import capacity
from btrfs_core.errors import InsufficientCapacity, ReadOnly
from btrfs_core.fake import FakeBackend
from btrfs_core.models import PoolSpace, QuotaStatus, Source, SourceKind
from btrfs_core.pool import Pool

MiB = 1 << 20


class CountingBackend(FakeBackend):
    """The fake, counting the metadata calls and the looks at the pool's state."""

    def __init__(self, root: Path, size: int = 1 << 30) -> None:
        super().__init__(root, size)
        self.calls: Counter[str] = Counter()

    def space(self) -> PoolSpace:
        self.calls["space"] += 1
        return super().space()

    def read_xattr(self, path: Path, name: str) -> bytes | None:
        self.calls["read_xattr"] += 1
        return super().read_xattr(path, name)

    def write_xattr(self, path: Path, name: str, value: bytes) -> None:
        self.calls["write_xattr"] += 1
        super().write_xattr(path, name, value)

    def remove_xattr(self, path: Path, name: str) -> None:
        self.calls["remove_xattr"] += 1
        super().remove_xattr(path, name)

    def read_only(self) -> bool:
        self.calls["read_only"] += 1
        return super().read_only()

    def quota_status(self) -> QuotaStatus:
        self.calls["quota_status"] += 1
        return super().quota_status()


def test_a_new_volume_is_written_once_and_answered_from_what_was_written(tmp_path: Path) -> None:
    backend = CountingBackend(tmp_path)
    pool = Pool.open(tmp_path, backend=backend)
    backend.calls.clear()
    volume = pool.create_volume("v", 8 * MiB, metadata={"k": "v"})
    assert backend.calls == Counter(write_xattr=1, space=1)
    assert pool.get_volume("v") == volume


def test_a_create_reads_the_pools_state_only_when_refused(tmp_path: Path) -> None:
    """Mount flags and quota status are read when a change fails, for the reason (the contract tests check
    the refusals), never before every create: each is a syscall or a tree search more per call."""
    backend = CountingBackend(tmp_path)
    pool = Pool.open(tmp_path, backend=backend)
    backend.calls.clear()
    pool.create_volume("v", 8 * MiB)
    assert backend.calls["read_only"] == backend.calls["quota_status"] == 0
    backend.readonly = True
    with pytest.raises(ReadOnly, match="mounted read-only"):
        pool.create_volume("w", 8 * MiB)
    assert backend.calls["read_only"] > 0


def test_only_a_restore_removes_the_snapshot_metadata_it_copied(tmp_path: Path) -> None:
    backend = CountingBackend(tmp_path)
    pool = Pool.open(tmp_path, backend=backend)
    pool.create_volume("v", 8 * MiB)
    pool.create_snapshot("s", "v")
    backend.calls.clear()
    clone = pool.create_volume("clone", 8 * MiB, Source(SourceKind.VOLUME, "v"))
    assert backend.calls["remove_xattr"] == 0
    restore = pool.create_volume("restore", 8 * MiB, Source(SourceKind.SNAPSHOT, "s"))
    assert backend.calls["remove_xattr"] == 1
    assert pool.list_snapshots() == [pool.get_snapshot("s")]  # the restore is no snapshot
    assert [pool.get_volume("clone"), pool.get_volume("restore")] == [clone, restore]


def three_creates(root: Path) -> tuple[Pool, CountingBackend]:
    """A pool on the counting fake after three creates, only their calls counted."""
    backend = CountingBackend(root)
    pool = Pool.open(root, backend=backend)
    backend.calls.clear()
    for name in ("a", "b", "c"):
        pool.create_volume(name, 8 * MiB)
    return pool, backend


def test_creates_in_a_row_share_a_reading_of_the_pools_space_until_a_promise_is_released(
    tmp_path: Path,
) -> None:
    pool, backend = three_creates(tmp_path)
    assert backend.calls["space"] == 1
    pool.delete_volume("a")  # what it wrote may stay, held by a snapshot, and is no longer promised
    pool.create_volume("d", 8 * MiB)
    assert backend.calls["space"] == 2


def test_a_reading_of_the_pools_space_is_not_used_past_its_age(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(capacity, "SPACE_READING_SECONDS", 0.0)
    _pool, backend = three_creates(tmp_path)
    assert backend.calls["space"] == 3


def test_a_create_that_does_not_fit_the_reading_is_judged_on_a_fresh_one(tmp_path: Path) -> None:
    backend = CountingBackend(tmp_path, size=100 * MiB)
    pool = Pool.open(tmp_path, backend=backend)
    pool.create_volume("a", 60 * MiB)  # read: 40 MiB left
    backend.size = 400 * MiB  # the pool grew (a device added) within the reading's age
    pool.create_volume("b", 200 * MiB)
    with pytest.raises(InsufficientCapacity, match="available"):
        pool.create_volume("c", 200 * MiB)  # no reading makes room that is not there
