"""What a hostile pod does inside its volume, on the real kernel: nests subvolumes thousands deep or
below paths longer than PATH_MAX, keeps data in nested subvolumes, fills its volume to the limit, makes
it read-only. None of it may break a delete, a start-up or a snapshot, or make a snapshot lie."""

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from btrfs_core import filesystem, subvolume
from btrfs_core.errors import NestedSubvolumes
from btrfs_core.models import QuotaMode, Source, SourceKind
from btrfs_core.pool import Pool
from tests.tenant import as_pod, hand_to_pod

from .oracle import filesystem_df, hash_tree, settle, subvolume_paths, write_random

pytestmark = pytest.mark.kernel

MiB = 1 << 20
PATH_MAX = 4096
LONG_NAME = "d" * 250


@pytest.fixture(params=[QuotaMode.FULL, QuotaMode.SIMPLE], ids=["full", "simple"])
def pool(btrfs_mount: Path, request: pytest.FixtureRequest) -> Pool:
    """A pool of its own on a fresh filesystem: what a failed test leaves cannot fail the next."""
    mode: QuotaMode = request.param
    return Pool.open(btrfs_mount, quota_mode=mode.value)


def nest(levels: int, data: int) -> Callable[[], None]:
    """The pod's work: `levels` subvolumes, each inside the last, created relative to the working
    directory; `data` bytes in the deepest."""

    def work() -> None:
        for _ in range(levels):
            subvolume.create(Path("n"))
            os.chdir("n")
        write_random(Path("data"), data, seed=levels)

    return work


def hide_beyond_path_max(data: int) -> Callable[[], None]:
    """The pod's work: directories of 250 characters, one inside the other, past PATH_MAX, created
    relative to the working directory; a subvolume with `data` bytes below them."""

    def work() -> None:
        depth = 0
        while depth <= PATH_MAX:
            os.mkdir(LONG_NAME)
            os.chdir(LONG_NAME)
            depth += len(LONG_NAME) + 1
        subvolume.create(Path("hidden"))
        write_random(Path("hidden", "data"), data, seed=depth)

    return work


def data_used(mount: Path) -> int:
    return filesystem_df(mount)["Data"][1]


def written_by_pod(pool: Pool, name: str, work: Callable[[], None]) -> str:
    volume = pool.create_volume(name, 64 * MiB)
    hand_to_pod(pool.volume_path(volume.id))
    as_pod(pool.volume_path(volume.id), work)
    return volume.id


@pytest.mark.parametrize(
    "work", [nest(1100, 8 * MiB), hide_beyond_path_max(16 * MiB)], ids=["1100-deep", "beyond-path-max"]
)
def test_delete_removes_whatever_a_pod_nested(pool: Pool, work: Callable[[], None]) -> None:
    before = data_used(pool.root)
    volume_id = written_by_pod(pool, "pvc-nesting", work)
    filesystem.sync(pool.root)
    assert data_used(pool.root) >= before + 8 * MiB

    pool.delete_volume(volume_id)

    assert pool.list_volumes() == [] and os.listdir(pool.staging_dir) == []
    settle(pool.root)  # the cleaner dropped every subvolume: their space is free again
    assert subvolume_paths(pool.root) == set()
    assert data_used(pool.root) < before + 8 * MiB
    reopened = Pool.open(pool.root)
    assert reopened.list_volumes() == [] and os.listdir(reopened.staging_dir) == []


@pytest.mark.parametrize(
    "work", [nest(1100, MiB), hide_beyond_path_max(MiB)], ids=["1100-deep", "beyond-path-max"]
)
def test_start_up_finishes_a_delete_that_a_crash_cut_short(pool: Pool, work: Callable[[], None]) -> None:
    volume_id = written_by_pod(pool, "pvc-crashed", work)
    # What a crash between DeleteVolume's rename and its delete leaves behind.
    os.rename(pool.volume_path(volume_id), pool.staging_dir / f"{volume_id}.0badc0de")

    reopened = Pool.open(pool.root)

    assert os.listdir(reopened.staging_dir) == [] and reopened.list_volumes() == []


def nested_data(levels: int) -> Callable[[], None]:
    """The pod's work, as containerd's or buildkit's: data in plain directories and in a subvolume."""

    def work() -> None:
        Path("plain").mkdir()
        write_random(Path("plain", "f"), MiB, seed=1)
        directory = Path("var", "lib", *[LONG_NAME] * levels)
        directory.mkdir(parents=True)
        subvolume.create(directory / "snapshots")
        write_random(directory / "snapshots" / "f", MiB, seed=2)
        subvolume.create(Path("cache"))

    return work


def test_snapshots_and_clones_of_a_volume_with_nested_subvolumes_are_refused_naming_them(
    pool: Pool,
) -> None:
    volume_id = written_by_pod(pool, "pvc-containers", nested_data(levels=2))
    deep = f"var/lib/{LONG_NAME}/{LONG_NAME}/snapshots"

    with pytest.raises(NestedSubvolumes) as refused:
        pool.create_snapshot("snap-containers", volume_id)
    message = str(refused.value)
    assert f"volume {volume_id}" in message and "cache" in message
    assert deep[:40] in message and deep[-40:] in message and deep not in message  # cut, not dropped
    with pytest.raises(NestedSubvolumes) as refused_clone:
        pool.create_volume("pvc-clone", 64 * MiB, Source(SourceKind.VOLUME, volume_id))
    assert str(refused_clone.value) == message

    assert pool.list_snapshots() == [] and os.listdir(pool.snapshots_dir) == []
    assert [v.id for v in pool.list_volumes()] == [volume_id] and os.listdir(pool.staging_dir) == []
    pool.delete_volume(volume_id)


def fill_to_the_limit() -> None:
    """The pod's work: writes until the kernel refuses with EDQUOT."""
    block = os.urandom(64 << 10)
    with open("full", "wb", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError as exc:
                if exc.errno != errno.EDQUOT:
                    raise
                return


def make_read_only() -> None:
    """The pod's work: some data, then its volume's root made read-only (its owner may)."""
    write_random(Path("f"), MiB, seed=3)
    subvolume.set_readonly(Path("."), True)


@pytest.mark.parametrize("work", [fill_to_the_limit, make_read_only], ids=["filled", "read-only"])
def test_a_volume_full_or_made_read_only_by_its_pod_can_be_snapshotted_and_restored(
    pool: Pool, work: Callable[[], None]
) -> None:
    volume_id = written_by_pod(pool, "pvc-cornered", work)
    source = pool.volume_path(volume_id)
    expected = hash_tree(source)
    xattrs = sorted(os.listxattr(source))

    snapshot = pool.create_snapshot("snap-cornered", volume_id)

    assert pool.get_snapshot("snap-cornered") == snapshot and snapshot.source_volume_id == volume_id
    assert subvolume.info(pool.snapshots_dir / snapshot.id).readonly
    assert hash_tree(pool.snapshots_dir / snapshot.id) == expected
    assert sorted(os.listxattr(source)) == xattrs  # nothing was written on the source
    restored = pool.create_volume("pvc-restored", 64 * MiB, Source(SourceKind.SNAPSHOT, snapshot.id))
    assert hash_tree(pool.volume_path(restored.id)) == expected
    for volume in (volume_id, restored.id):
        pool.delete_volume(volume)
    pool.delete_snapshot(snapshot.id)
    assert os.listdir(pool.snapshots_dir) == []
