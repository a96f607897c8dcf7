"""The CSI capacity range, decided once in the core: what a new volume gets, and which existing volume a
repeated request accepts. Logic, on a 1 TiB fake pool so that the pool's own space never decides; the
kernel's side (the limit a clone or restore gets) is in tests/contract."""

from pathlib import Path

import pytest

from btrfs_core.capacity import MAX_VOLUME_BYTES, MIN_VOLUME_BYTES
from btrfs_core.errors import AlreadyExists, CapacityOutOfRange
from btrfs_core.fake import FakeBackend
from btrfs_core.models import Source, SourceKind
from btrfs_core.pool import Pool

MiB, GiB = 1 << 20, 1 << 30
PVC = {"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "team"}


@pytest.fixture
def pool(tmp_path: Path) -> Pool:
    root = tmp_path / "pool"
    root.mkdir()
    return Pool.open(root, backend=FakeBackend(root, size=1 << 40))


@pytest.mark.parametrize(
    ("required", "limit", "capacity"),
    [
        (0, 0, GiB),  # no range: the default
        (10 * MiB, 0, 10 * MiB),
        (10 * MiB, 10 * MiB, 10 * MiB),
        (10 * MiB, 20 * MiB, 10 * MiB),
        (0, 20 * MiB, 20 * MiB),  # only a limit: the default cut down to it
        (0, 4 * GiB, GiB),
        (1, 0, MIN_VOLUME_BYTES),  # below the smallest volume: rounded up
        (1, MIN_VOLUME_BYTES, MIN_VOLUME_BYTES),
    ],
)
def test_an_empty_volume_gets_a_capacity_in_the_range(
    pool: Pool, required: int, limit: int, capacity: int
) -> None:
    assert pool.create_volume("v", required, limit=limit).capacity == capacity


@pytest.mark.parametrize(
    ("required", "limit"),
    [(-1, 0), (0, -1), (2 * MiB, MiB), (0, MIN_VOLUME_BYTES - 1), (1, 100), (MAX_VOLUME_BYTES + 1, 0)],
)
def test_an_unsatisfiable_range_is_out_of_range(pool: Pool, required: int, limit: int) -> None:
    with pytest.raises(CapacityOutOfRange):
        pool.create_volume("v", required, limit=limit)
    assert pool.list_volume_ids() == []


@pytest.mark.parametrize("kind", [SourceKind.SNAPSHOT, SourceKind.VOLUME])
def test_a_clone_or_restore_defaults_to_its_sources_size(pool: Pool, kind: SourceKind) -> None:
    pool.create_volume("src", 3 * GiB)
    pool.create_snapshot("snap", "src")
    source = Source(kind, "snap" if kind is SourceKind.SNAPSHOT else "src")
    assert pool.create_volume("none", 0, source).capacity == 3 * GiB  # no range: not the 1 GiB default
    assert pool.create_volume("limit", 0, source, limit=4 * GiB).capacity == 3 * GiB  # the limit admits it
    assert pool.create_volume("exact", 0, source, limit=3 * GiB).capacity == 3 * GiB
    assert pool.create_volume("more", 5 * GiB, source).capacity == 5 * GiB
    for required, limit in ((0, 2 * GiB), (GiB, 0), (GiB, 2 * GiB)):  # its data would not fit
        with pytest.raises(CapacityOutOfRange, match="capacity_range"):
            pool.create_volume("small", required, source, limit=limit)


def test_an_existing_volume_is_judged_by_range_source_and_parameters(pool: Pool) -> None:
    volume = pool.create_volume("v", 16 * MiB, metadata=PVC)
    assert pool.create_volume("v", 16 * MiB, metadata=PVC) == volume
    assert pool.create_volume("v", 8 * MiB, metadata=PVC, limit=32 * MiB) == volume  # 16 MiB is in range
    assert pool.create_volume("v", 0, metadata=PVC) == volume
    for required, limit in ((32 * MiB, 0), (0, 8 * MiB)):
        with pytest.raises(AlreadyExists, match="capacity 16777216"):
            pool.create_volume("v", required, metadata=PVC, limit=limit)
    other_claim = {**PVC, "csi.storage.k8s.io/pvc/name": "other"}
    with pytest.raises(AlreadyExists, match=r"other parameters: csi\.storage\.k8s\.io/pvc/name differ"):
        pool.create_volume("v", 16 * MiB, metadata=other_claim)
    with pytest.raises(AlreadyExists, match="parameters"):
        pool.create_volume("v", 16 * MiB)
    pool.create_snapshot("snap", "v")
    with pytest.raises(AlreadyExists, match="source"):
        pool.create_volume("v", 16 * MiB, Source(SourceKind.SNAPSHOT, "snap"), metadata=PVC)
    assert pool.get_volume("v") == volume and volume.metadata == PVC
