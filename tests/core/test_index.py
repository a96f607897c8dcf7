"""The pool's directory indexes: each object read once, a replacement under the same name read again."""

import collections
from pathlib import Path

import pytest

from btrfs_core.fake import FakeBackend
from btrfs_core.models import Algorithm, Compression, Snapshot, Volume
from btrfs_core.pool import Pool

MiB = 1 << 20


class Derived:
    """A `derive` that counts the objects it is given: each is one read of the object."""

    def __init__(self) -> None:
        self.reads: collections.Counter[str] = collections.Counter()

    def __call__(self, obj: Volume | Snapshot) -> str:
        self.reads[obj.id] += 1
        return obj.metadata.get("team", "") if isinstance(obj, Volume) else obj.source_volume_id


@pytest.mark.kernel
def test_each_object_is_read_once_and_a_replacement_again(btrfs_mount: Path) -> None:
    pool = Pool.open(btrfs_mount)
    volumes, snapshots = Derived(), Derived()
    volume_index, snapshot_index = pool.volume_index(volumes), pool.snapshot_index(snapshots)
    for name in ("v1", "v2", "v3"):
        pool.create_volume(name, 16 * MiB, metadata={"team": "a"})
    pool.create_snapshot("s1", "v1")
    for _ in range(2):
        assert sorted((v.id, team) for v, team in volume_index.refresh()) == [
            ("v1", "a"),
            ("v2", "a"),
            ("v3", "a"),
        ]
        assert [(s.id, source) for s, source in snapshot_index.refresh()] == [("s1", "v1")]
    assert sum(volumes.reads.values()) == 3 and sum(snapshots.reads.values()) == 1

    pool.create_volume("v4", 16 * MiB)
    pool.delete_volume("v2")
    assert sorted(v.id for v, _team in volume_index.refresh()) == ["v1", "v3", "v4"]
    assert sum(volumes.reads.values()) == 4

    # Same name, new subvolume, other metadata: the index must not serve the old one.
    pool.delete_volume("v3")
    pool.create_volume("v3", 32 * MiB, metadata={"team": "b"})
    assert dict((v.id, team) for v, team in volume_index.refresh())["v3"] == "b"
    assert volumes.reads["v3"] == 2 and sum(volumes.reads.values()) == 5


def test_without_subvolume_ids_as_d_ino_every_refresh_reads_everything(tmp_path: Path) -> None:
    pool = Pool.open(tmp_path, backend=FakeBackend(tmp_path))
    volumes = Derived()
    index = pool.volume_index(volumes)
    pool.create_volume("v", 16 * MiB)
    (pool.volumes_dir / "stray").mkdir()  # not a volume: skipped, tried again next time
    for _ in range(2):
        assert [v.id for v, _team in index.refresh()] == ["v"]
    assert volumes.reads["v"] == 2


@pytest.mark.kernel
def test_a_modified_volume_alone_is_read_again(btrfs_mount: Path) -> None:
    pool = Pool.open(btrfs_mount)
    reads: collections.Counter[str] = collections.Counter()

    def compression(volume: Volume) -> str:
        reads[volume.id] += 1
        return str(volume.tuning.compression or "")

    index = pool.volume_index(compression)
    for name in ("v1", "v2", "v3"):
        pool.create_volume(name, 16 * MiB)
    assert len(index.refresh()) == 3 and sum(reads.values()) == 3
    pool.modify_volume("v2", Compression(Algorithm.ZSTD, 3))
    assert {v.id: c for v, c in index.refresh()} == {"v1": "", "v2": "zstd:3", "v3": ""}
    assert reads == {"v1": 1, "v2": 2, "v3": 1}
    pool.modify_volume("v2", None)  # changes nothing: nothing to read again
    index.refresh()
    assert reads == {"v1": 1, "v2": 2, "v3": 1}


@pytest.mark.kernel
def test_a_modify_during_a_refresh_is_read_at_the_next(btrfs_mount: Path) -> None:
    pool = Pool.open(btrfs_mount)
    pool.create_volume("v", 16 * MiB)

    def modified_meanwhile(volume: Volume) -> str:
        """Derives from the volume as read, then the volume changes before the refresh ends."""
        seen = str(volume.tuning.compression or "")
        if not seen:
            pool.modify_volume("v", Compression(Algorithm.LZO))
        return seen

    index = pool.volume_index(modified_meanwhile)
    assert [c for _v, c in index.refresh()] == [""]
    assert [c for _v, c in index.refresh()] == ["lzo"]
