"""What a CreateVolume costs in calls to the filesystem: a new volume's metadata is written once and
its answer built from what was written, with nothing read back or removed. Logic, on the fake."""

from collections import Counter
from pathlib import Path

import pytest

from btrfs_core.errors import ReadOnly
from btrfs_core.fake import FakeBackend
from btrfs_core.models import QuotaStatus, Source, SourceKind
from btrfs_core.pool import Pool

MiB = 1 << 20


class CountingBackend(FakeBackend):
    """The fake, counting the metadata calls and the looks at the pool's state."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.calls: Counter[str] = Counter()

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
    assert backend.calls == Counter(write_xattr=1)
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
