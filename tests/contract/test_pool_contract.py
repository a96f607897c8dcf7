"""One behaviour suite for the pool, run on the in-memory fake and on the real kernel, so the fake
cannot drift from btrfs."""

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from btrfs_core import quota
from btrfs_core.backend import KernelBackend
from btrfs_core.errors import (
    AlreadyExists,
    CapacityOutOfRange,
    InsufficientCapacity,
    InUse,
    InvalidArgument,
    NestedSubvolumes,
    NotFound,
    QuotaDisabled,
    ReadOnly,
)
from btrfs_core.fake import FakeBackend
from btrfs_core.models import NestedScan, QuotaMode, QuotaRepairs, Source, SourceKind
from btrfs_core.pool import MIN_VOLUME_BYTES, Pool
from tests.conftest import kernel_skip_reason
from tests.core.oracle import cli
from tests.support import eventually, loop_pool

MiB = 1 << 20


class CountingKernel(KernelBackend):
    """The kernel backend, counting transaction commits as the fake does; with the last generation the
    pool read (the mark its commit had to cover) and the last transaction committed."""

    syncs = 0
    mark = 0
    committed = 0

    def generation(self) -> int:
        self.mark = super().generation()
        return self.mark

    def sync(self) -> int:
        self.syncs += 1
        self.committed = super().sync()
        return self.committed


Backends = FakeBackend | CountingKernel


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.kernel)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backends]:
    if request.param == "fake":
        yield FakeBackend(tmp_path)
        return
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    with loop_pool() as mountpoint:
        yield CountingKernel(mountpoint)


@pytest.fixture
def pool(backend: Backends) -> Pool:
    return Pool.open(backend.root, backend=backend)


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_open_lays_out_the_pool_and_turns_quotas_on(pool: Pool) -> None:
    assert {p.name for p in pool.root.iterdir()} >= {"volumes", "snapshots", ".staging"}
    assert pool.stats.quota_status().mode in (QuotaMode.SIMPLE, QuotaMode.FULL)


def test_create_is_idempotent_and_refuses_a_different_request(pool: Pool) -> None:
    volume = pool.create_volume("pvc-1", 8 * MiB, metadata={"csi.storage.k8s.io/pvc/name": "data"})
    assert volume.id == "pvc-1" and volume.capacity == 8 * MiB
    assert pool.create_volume("pvc-1", 8 * MiB, metadata={"csi.storage.k8s.io/pvc/name": "data"}) == volume
    with pytest.raises(AlreadyExists, match="pvc-1"):
        pool.create_volume("pvc-1", 16 * MiB)
    pool.create_snapshot("snap", "pvc-1")
    with pytest.raises(AlreadyExists):
        pool.create_volume("pvc-1", 8 * MiB, Source(SourceKind.SNAPSHOT, "snap"))
    assert [v.id for v in pool.list_volumes()] == ["pvc-1"]


def test_every_mutation_commits_before_returning(pool: Pool, backend: Backends) -> None:
    for action in (
        lambda: pool.create_volume("v", 4 * MiB),
        lambda: pool.create_volume("v", 4 * MiB),  # the retry commits too: its first try may not have
        lambda: pool.expand_volume("v", 8 * MiB),
        lambda: pool.create_snapshot("s", "v"),
        lambda: pool.delete_snapshot("s"),
        lambda: pool.delete_volume("v"),
        lambda: pool.delete_volume("v"),
    ):
        before = backend.syncs
        action()
        # One commit, or none needed: the transactions the call's changes can be in (up to the
        # generation it read after them) were all committed already (a retry whose first try was).
        assert backend.syncs == before + 1 or (
            isinstance(backend, CountingKernel) and backend.committed >= backend.mark > 0
        )


def test_ids_are_deterministic_and_hostile_ones_never_become_paths(pool: Pool) -> None:
    assert Pool.volume_id("pvc-0a1b") == "pvc-0a1b"
    hashed = Pool.volume_id("a/../b")
    assert hashed == Pool.volume_id("a/../b") and hashed.startswith("h-") and "/" not in hashed
    before = tree(pool.root)
    for bad in ("..", "../x", "a/b", "x\x00y", "", "v" * 10240, ".hidden"):
        for call in (
            pool.get_volume,
            pool.delete_volume,
            pool.volume_path,
            pool.get_snapshot,
            pool.delete_snapshot,
        ):
            with pytest.raises(InvalidArgument):
                call(bad)
        with pytest.raises(InvalidArgument):
            pool.create_snapshot("s", bad)
    for bad_name in ("", "x\x00y", "n" * 10240):
        with pytest.raises(InvalidArgument):
            pool.create_volume(bad_name, 4 * MiB)
    assert tree(pool.root) == before


def test_get_list_delete(pool: Pool) -> None:
    pool.create_volume("b", 4 * MiB)
    pool.create_volume("a", 4 * MiB)
    assert [v.id for v in pool.list_volumes()] == ["a", "b"]
    pool.delete_volume("a")
    pool.delete_volume("a")
    pool.delete_volume("never-was")
    with pytest.raises(NotFound):
        pool.get_volume("a")
    assert [v.id for v in pool.list_volumes()] == ["b"]
    assert os.listdir(pool.staging_dir) == []


def test_a_name_shaped_like_a_hashed_id_is_another_volume(pool: Pool) -> None:
    unsafe = pool.create_volume("pvc with spaces", 8 * MiB)
    assert unsafe.id.startswith("h-")
    # The hashed ID used as a name is a different name: a volume of its own, both usable, in any order.
    shaped = pool.create_volume(unsafe.id, 8 * MiB)
    assert shaped.id != unsafe.id and shaped.name == unsafe.id
    assert pool.create_volume("pvc with spaces", 8 * MiB) == unsafe
    assert {v.name for v in pool.list_volumes()} == {"pvc with spaces", unsafe.id}
    snapshot = pool.create_snapshot(unsafe.id, shaped.id)
    assert pool.create_snapshot(snapshot.id, unsafe.id).id not in (snapshot.id, unsafe.id)


@pytest.fixture(params=["fake", pytest.param("kernel", marks=pytest.mark.kernel)])
def big_pool(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Pool]:
    """A 4 GiB pool that promises twice its size: room for a volume above the 1 GiB default and two
    clones of it."""
    if request.param == "fake":
        yield Pool.open(tmp_path, backend=FakeBackend(tmp_path, size=4 << 30), overprovision=2.0)
        return
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    with loop_pool(size=4 << 30) as mountpoint:
        yield Pool.open(mountpoint, overprovision=2.0)


def test_a_restore_or_clone_without_a_size_gets_its_sources_size_as_its_limit(big_pool: Pool) -> None:
    pool, size = big_pool, 1536 * MiB
    pool.create_volume("big", size)
    pool.create_snapshot("big-snap", "big")
    restored = pool.create_volume("restored", 0, Source(SourceKind.SNAPSHOT, "big-snap"))
    cloned = pool.create_volume("cloned", 0, Source(SourceKind.VOLUME, "big"), limit=2 * size)
    for volume in (restored, cloned):
        assert volume.capacity == size and pool.stats.volume_usage(volume.id).limit == size
    with pytest.raises(CapacityOutOfRange):
        pool.create_volume("small", 0, Source(SourceKind.VOLUME, "big"), limit=size - MiB)


def test_snapshot_restore_and_clone(pool: Pool) -> None:
    pool.create_volume("src", 8 * MiB)
    (pool.volume_path("src") / "data").write_bytes(b"payload" * 1000)
    snap = pool.create_snapshot("snap", "src")
    assert snap.source_volume_id == "src" and snap.size == 8 * MiB
    assert pool.create_snapshot("snap", "src") == snap
    pool.create_volume("other", 4 * MiB)
    with pytest.raises(AlreadyExists):
        pool.create_snapshot("snap", "other")
    with pytest.raises(NotFound):
        pool.create_snapshot("snap2", "missing")
    with pytest.raises(CapacityOutOfRange):
        pool.create_volume("small", 4 * MiB, Source(SourceKind.SNAPSHOT, "snap"))
    with pytest.raises(NotFound):
        pool.create_volume("ghost", 8 * MiB, Source(SourceKind.SNAPSHOT, "nope"))
    (pool.volume_path("src") / "data").write_bytes(b"changed")
    restored = pool.create_volume("restored", 12 * MiB, Source(SourceKind.SNAPSHOT, "snap"))
    clone = pool.create_volume("clone", 10 * MiB, Source(SourceKind.VOLUME, "src"))
    assert (pool.volume_path("restored") / "data").read_bytes() == b"payload" * 1000
    assert (pool.volume_path("clone") / "data").read_bytes() == b"changed"
    # Each clone and restore has its own limit, not its source's.
    assert pool.stats.volume_usage("restored").limit == restored.capacity == 12 * MiB
    assert pool.stats.volume_usage("clone").limit == clone.capacity == 10 * MiB
    pool.delete_volume("src")
    assert pool.get_snapshot("snap").source_volume_id == "src"
    again = pool.create_volume("again", 8 * MiB, Source(SourceKind.SNAPSHOT, "snap"))
    assert (pool.volume_path(again.id) / "data").read_bytes() == b"payload" * 1000


def test_expand_raises_only(pool: Pool) -> None:
    pool.create_volume("v", 4 * MiB)
    assert pool.expand_volume("v", 4 * MiB).capacity == 4 * MiB
    assert pool.expand_volume("v", 6 * MiB).capacity == 6 * MiB
    assert pool.stats.volume_usage("v").limit == 6 * MiB
    assert pool.expand_volume("v", 5 * MiB).capacity == 6 * MiB  # never shrinks
    with pytest.raises(CapacityOutOfRange):
        pool.expand_volume("v", 5 * MiB, limit=5 * MiB)
    with pytest.raises(NotFound):
        pool.expand_volume("gone", 8 * MiB)


def test_capacity_is_accounted(pool: Pool) -> None:
    with pytest.raises(CapacityOutOfRange):  # a range with no room for the smallest volume
        pool.create_volume("tiny", 0, limit=MIN_VOLUME_BYTES - 1)
    available = pool.available_capacity()
    with pytest.raises(InsufficientCapacity):
        pool.create_volume("huge", available + 1)
    # The sum of limits stays within the pool's size (overprovision ratio 1.0).
    size = pool.stats.fs_usage().size
    pool.create_volume("most", size - 64 * MiB if size - 64 * MiB <= available else available)
    promised = pool.get_volume("most").capacity
    assert pool.available_capacity() <= size - promised
    with pytest.raises(InsufficientCapacity):
        pool.create_volume("rest", size - promised + MiB)


def test_state_survives_reopening(pool: Pool, backend: Backends) -> None:
    promised = pool.available_capacity() // 2
    pool.create_volume("v", promised, metadata={"csi.storage.k8s.io/pvc/namespace": "ns"})
    pool.create_snapshot("s", "v")
    reopened = Pool.open(pool.root, backend=backend)
    assert reopened.get_volume("v").metadata == {"csi.storage.k8s.io/pvc/namespace": "ns"}
    assert reopened.get_snapshot("s").source_volume_id == "v"
    # The reopened pool knows what is already promised.
    assert reopened.available_capacity() <= reopened.stats.fs_usage().size - promised


def test_open_clears_staging_debris(pool: Pool, backend: Backends) -> None:
    backend.create_subvolume(pool.staging_dir / "half-made.1234")
    (pool.staging_dir / "stray-file").write_text("x")
    reopened = Pool.open(pool.root, backend=backend)
    assert os.listdir(reopened.staging_dir) == []
    assert reopened.list_volumes() == []


def test_nested_subvolumes_are_named_by_snapshot_and_clone_refusals_and_go_with_their_volume(
    pool: Pool, backend: Backends
) -> None:
    pool.create_volume("holder", 8 * MiB)
    root = pool.volume_path("holder")
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("in a plain directory")
    for relative in ("a/b/inner", "a/b/inner/deeper", "top"):
        backend.create_subvolume(root / relative)
        (root / relative / "f").write_text(f"in {relative}")
    assert backend.nested_subvolumes(root) == ["a/b/inner", "top"]
    assert backend.nested_subvolumes(root / "a/b/inner") == ["deeper"]

    with pytest.raises(NestedSubvolumes, match=r"volume holder holds nested subvolumes.*: a/b/inner, top;"):
        pool.create_snapshot("snap", "holder")
    with pytest.raises(NestedSubvolumes, match="a/b/inner, top;"):
        pool.create_volume("clone", 8 * MiB, Source(SourceKind.VOLUME, "holder"))
    assert tree(pool.snapshots_dir) == tree(pool.staging_dir) == [] and pool.list_volume_ids() == ["holder"]

    # What the refusal spares users: a btrfs snapshot is not recursive, nested ones come out empty.
    backend.snapshot(root, pool.root / "plain-snapshot", readonly=True)
    assert tree(pool.root / "plain-snapshot") == ["a", "a/b", "a/b/f", "a/b/inner", "top"]
    assert backend.nested_subvolumes(pool.root / "plain-snapshot") == []
    backend.delete_subvolume(pool.root / "plain-snapshot")

    pool.delete_volume("holder")
    assert tree(pool.volumes_dir) == tree(pool.staging_dir) == []


def test_a_subvolume_nested_while_the_kernel_snapshots_is_caught_too(
    pool: Pool, backend: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool.create_volume("racer", 8 * MiB)
    root = pool.volume_path("racer")
    real_snapshot = backend.snapshot

    def snapshot_while_the_pod_nests(source: Path, path: Path, *args: Any, **kwargs: Any) -> None:
        if source == root and not (root / "late").exists():
            backend.create_subvolume(root / "late")  # after the first check, before the snapshot
        real_snapshot(source, path, *args, **kwargs)

    monkeypatch.setattr(backend, "snapshot", snapshot_while_the_pod_nests)
    with pytest.raises(NestedSubvolumes, match="late"):
        pool.create_snapshot("snap", "racer")
    backend.delete_subvolume(root / "late")
    with pytest.raises(NestedSubvolumes, match="late"):
        pool.create_volume("clone", 8 * MiB, Source(SourceKind.VOLUME, "racer"))
    assert tree(pool.snapshots_dir) == tree(pool.staging_dir) == [] and pool.list_volume_ids() == ["racer"]


def test_health(pool: Pool, backend: Backends) -> None:
    pool.create_volume("v", 4 * MiB)
    assert not pool.stats.volume_health("v").abnormal
    assert pool.stats.volume_stats("v") == (pool.stats.volume_usage("v"), pool.stats.volume_health("v"))
    backend.set_limit(pool.get_volume("v").qgroup, None)
    assert "no qgroup limit" in pool.stats.volume_health("v").message
    assert pool.stats.volume_stats("v") == (pool.stats.volume_usage("v"), pool.stats.volume_health("v"))
    backend.delete_subvolume(pool.volume_path("v"))
    health = pool.stats.volume_health("v")
    assert health.abnormal and "missing" in health.message


def test_only_one_exclusive_open_at_a_time(pool: Pool, backend: Backends) -> None:
    first = Pool.open(pool.root, backend=backend, exclusive=True)
    with pytest.raises(InUse, match="another process"):
        Pool.open(pool.root, backend=backend, exclusive=True)
    Pool.open(pool.root, backend=backend)  # readers are not kept out
    first.close()
    Pool.open(pool.root, backend=backend, exclusive=True).close()


def test_names_held_by_something_else_are_refused_and_left_alone(pool: Pool, backend: Backends) -> None:
    pool.create_volume("mine", 4 * MiB)
    backend.create_subvolume(pool.volumes_dir / "alien")  # a subvolume without the driver's metadata
    (pool.volumes_dir / "plain").mkdir()
    (pool.volumes_dir / "plain" / "data").write_text("not a volume")
    (pool.volumes_dir / "empty").mkdir()
    (pool.snapshots_dir / "stray").write_text("not a snapshot")
    before = tree(pool.root)
    for name in ("alien", "plain", "empty"):
        with pytest.raises(AlreadyExists, match="did not make"):
            pool.create_volume(name, 4 * MiB)
    with pytest.raises(AlreadyExists, match="did not make"):
        pool.create_snapshot("stray", "mine")
    assert tree(pool.root) == before
    assert [v.id for v in pool.list_volumes()] == ["mine"] and pool.list_snapshots() == []


def test_quotas_turned_off_behind_the_pools_back_refuse_limits(pool: Pool, backend: Backends) -> None:
    pool.create_volume("v", 4 * MiB)
    if isinstance(backend, FakeBackend):
        backend.mode = QuotaMode.OFF
    else:
        cli("btrfs", "quota", "disable", str(backend.root))
    with pytest.raises(QuotaDisabled, match="quotas are off"):
        pool.create_volume("w", 4 * MiB)
    with pytest.raises(QuotaDisabled):
        pool.expand_volume("v", 8 * MiB)
    assert "quotas are off" in pool.stats.volume_health("v").message
    assert os.listdir(pool.staging_dir) == [] and [v.id for v in pool.list_volumes()] == ["v"]
    assert Pool.open(pool.root, backend=backend).stats.quota_status().mode is not QuotaMode.OFF  # on again


def set_read_only(backend: Backends, read_only: bool) -> None:
    if isinstance(backend, FakeBackend):
        backend.readonly = read_only
    else:
        cli("mount", "-o", "remount,ro" if read_only else "remount,rw", str(backend.root))


def test_a_pool_mounted_read_only_refuses_changes_and_offers_no_capacity(
    pool: Pool, backend: Backends
) -> None:
    pool.create_volume("v", 4 * MiB)
    set_read_only(backend, True)
    try:
        assert pool.stats.read_only() and pool.available_capacity() == 0
        with pytest.raises(ReadOnly, match="mounted read-only"):
            pool.create_volume("w", 4 * MiB)
        with pytest.raises(ReadOnly):
            pool.delete_volume("v")
        assert "read-only" in pool.stats.volume_health("v").message
        assert [v.id for v in pool.list_volumes()] == ["v"]
    finally:
        set_read_only(backend, False)
    assert not pool.stats.read_only() and pool.available_capacity() > 0


def disable_quota(backend: Backends) -> None:
    if isinstance(backend, FakeBackend):
        backend.disable_quota()
    else:
        cli("btrfs", "quota", "disable", str(backend.root))


def test_each_volume_has_its_own_level1_qgroup_that_carries_the_limit(pool: Pool, backend: Backends) -> None:
    volume = pool.create_volume("v", 8 * MiB)
    pool.create_snapshot("s", "v")
    clone = pool.create_volume("c", 12 * MiB, Source(SourceKind.SNAPSHOT, "s"))
    relations = backend.qgroup_relations()
    snapshot = pool.get_snapshot("s")
    assert volume.qgroup >= quota.LEVEL1 and clone.qgroup >= quota.LEVEL1 and volume.qgroup != clone.qgroup
    assert relations[volume.subvolume_id] == {volume.qgroup}
    assert relations[clone.subvolume_id] == {clone.qgroup}
    assert snapshot.subvolume_id not in relations  # a snapshot is charged to no volume
    assert backend.usage(volume.qgroup).limit == 8 * MiB and backend.usage(clone.qgroup).limit == 12 * MiB
    for subvolume_id in (volume.subvolume_id, clone.subvolume_id, snapshot.subvolume_id):
        assert backend.usage(subvolume_id).limit is None  # nothing for a snapshot to inherit
    assert pool.stats.volume_usage("v") == backend.usage(volume.qgroup)
    usage = pool.stats.volumes_usage(pool.list_volumes())
    assert usage == {"c": backend.usage(clone.qgroup), "v": pool.stats.volume_usage("v")}
    assert pool.upkeep.repair_quotas() == QuotaRepairs() and pool.upkeep.reparent_nested() == NestedScan(0, 0)
    pool.delete_volume("v")

    def removed() -> bool:
        # The kernel refuses to destroy it until its cleaner, which a commit wakes, has dropped the
        # subvolume; repair retries.
        backend.sync()
        pool.upkeep.repair_quotas()
        return volume.qgroup not in backend.group_usage_all()

    eventually(removed, "the volume's qgroup removed", interval=0.05)
    assert set(backend.group_usage_all()) == {clone.qgroup}


def test_subvolumes_nested_in_a_volume_are_moved_into_its_qgroup(pool: Pool, backend: Backends) -> None:
    volume = pool.create_volume("v", 8 * MiB)
    neighbour = pool.create_volume("w", 8 * MiB)
    path = pool.volume_path("v")
    backend.create_subvolume(path / "plain")
    (path / "deep" / "er").mkdir(parents=True)
    backend.create_subvolume(path / "deep" / "er" / "stolen", qgroup=neighbour.qgroup)
    backend.create_subvolume(path / "plain" / "inner")
    backend.snapshot(path / "plain", path / "copy", readonly=True)
    scan = pool.upkeep.reparent_nested()
    volumes = {volume.subvolume_id, neighbour.subvolume_id}
    nested = [s for s in backend.subvolume_parents() if s not in volumes]
    assert len(nested) == 4
    # Simple quotas put plain creates inside at once; the neighbour's qgroup never was right.
    assert scan.repaired == scan.out_of_place >= 1
    relations = backend.qgroup_relations()
    assert all(relations[s] == {volume.qgroup} for s in nested)
    assert relations[neighbour.subvolume_id] == {neighbour.qgroup}
    assert pool.upkeep.reparent_nested() == NestedScan(0, 0)


def test_limits_removed_by_hand_come_back(pool: Pool, backend: Backends) -> None:
    volume = pool.create_volume("v", 8 * MiB)
    backend.set_limit(volume.qgroup, None)
    backend.set_limit(volume.subvolume_id, 64 * MiB)
    assert pool.upkeep.repair_quotas() == QuotaRepairs(limits_restored=1)
    assert backend.usage(volume.qgroup).limit == 8 * MiB and backend.usage(volume.subvolume_id).limit is None
    assert pool.upkeep.repair_quotas() == QuotaRepairs()


@pytest.mark.parametrize("wanted", ["auto", "full"])
def test_quotas_disabled_come_back_with_mode_qgroups_and_limits(
    pool: Pool, backend: Backends, wanted: str
) -> None:
    mode = pool.stats.quota_status().mode
    volume = pool.create_volume("v", 8 * MiB)
    disable_quota(backend)
    reopened = Pool.open(pool.root, wanted, backend=backend)
    assert reopened.stats.quota_status().mode is (mode if wanted == "auto" else QuotaMode(wanted))
    assert reopened.upkeep.repair_quotas() == QuotaRepairs(qgroups_restored=1, limits_restored=1)
    assert reopened.upkeep.reparent_nested() == NestedScan(1, 1)
    assert backend.qgroup_relations()[volume.subvolume_id] == {volume.qgroup}
    assert reopened.stats.volume_usage("v").limit == 8 * MiB


def test_volumes_of_the_old_shape_are_migrated_once(pool: Pool, backend: Backends) -> None:
    """A volume as the driver made it before level-1 qgroups: the limit on its own 0/N, no qgroup in
    its metadata; and one whose migration was cut short after its qgroup was named."""
    old = make_old_volume(pool, backend, "old", 8 * MiB)
    cut = make_old_volume(pool, backend, "cut", 4 * MiB)
    group = quota.LEVEL1 | 1 << 47 | 99
    backend.create_qgroup(group)
    named = {**read_meta(backend, pool.volumes_dir / "cut"), "qgroup": group}
    write_meta(backend, pool.volumes_dir / "cut", named)
    backend.create_qgroup(quota.LEVEL1 | 1 << 47 | 7)  # a crash between the qgroup and its volume
    backend.create_qgroup(quota.LEVEL1 | 42)  # an operator's own: not the driver's to remove
    assert pool.get_volume("old").qgroup == old  # usage still reads the limit where it is
    assert pool.stats.volume_usage("old").limit == 8 * MiB
    assert pool.upkeep.repair_quotas() == QuotaRepairs(migrated=1, limits_restored=1, orphans_removed=1)
    assert pool.upkeep.reparent_nested() == NestedScan(1, 1)  # the cut one's subvolume, not assigned yet
    migrated = pool.get_volume("old")
    assert migrated.qgroup >= quota.LEVEL1 | 1 << 47 and pool.get_volume("cut").qgroup == group
    relations = backend.qgroup_relations()
    assert relations[old] == {migrated.qgroup} and relations[cut] == {group}
    assert pool.stats.volume_usage("old").limit == 8 * MiB and pool.stats.volume_usage("cut").limit == 4 * MiB
    assert backend.usage(old).limit is None and backend.usage(cut).limit is None
    assert set(backend.group_usage_all()) == {migrated.qgroup, group, quota.LEVEL1 | 42}
    assert pool.upkeep.repair_quotas() == QuotaRepairs() and pool.upkeep.reparent_nested() == NestedScan(0, 0)


def make_old_volume(pool: Pool, backend: Backends, name: str, capacity: int) -> int:
    staged = pool.staging_dir / name
    backend.create_subvolume(staged)
    meta = {"kind": "volume", "name": name, "capacity": capacity, "source": None, "metadata": {}}
    write_meta(backend, staged, meta)
    subvolume_id = backend.subvolume_info(staged).id
    backend.set_limit(subvolume_id, capacity)
    backend.rename(staged, pool.volumes_dir / name)
    return subvolume_id


def read_meta(backend: Backends, path: Path) -> dict[str, object]:
    fields: dict[str, object] = json.loads(os.getxattr(path, backend.metadata_xattr))
    return fields


def write_meta(backend: Backends, path: Path, fields: dict[str, object]) -> None:
    os.setxattr(path, backend.metadata_xattr, json.dumps(fields).encode())
