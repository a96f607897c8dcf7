"""The reconciler: rescans, stale qgroups, staging debris, vanished volumes; failures logged and
reported, never raised. A recording observer stands in for the exporter's metrics."""

import collections
import fcntl
import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from btrfs_core import filesystem
from btrfs_core.maintenance import (
    ACTION_CLEAR_STAGING,
    ACTION_RELEASE_VANISHED,
    ACTION_REMOVE_STALE_QGROUP,
    Reconciler,
)
from btrfs_core.pool import Pool

from .oracle import cli, qgroup_show, write_random

MiB = 1 << 20


class Recorder:
    """A ReconcilerObserver that keeps what it is told; `rounds` is released once per finished round."""

    def __init__(self) -> None:
        self.repairs: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()
        self.stale: list[int] = []  # what each round found
        self.debris: list[int] = []  # what resisted, each round
        self.nested: list[int] = []
        self.rounds_done = 0
        self.rounds = threading.Semaphore(0)

    def repaired(self, action: str, count: int) -> None:
        self.repairs[action] += count

    def stale_qgroups(self, found: int) -> None:
        self.stale.append(found)

    def debris_left(self, entries: int) -> None:
        self.debris.append(entries)

    def nested_out_of_place(self, found: int) -> None:
        self.nested.append(found)

    def step_failed(self, step: str) -> None:
        self.failures[step] += 1

    def round_done(self) -> None:
        self.rounds_done += 1
        self.rounds.release()


@pytest.fixture(params=["full", "simple"])
def pool(btrfs_mount: Path, request: pytest.FixtureRequest) -> Iterator[Pool]:
    """A pool on a fresh filesystem whose quotas were off, opened in each quota mode."""
    yield Pool.open(btrfs_mount, quota_mode=request.param)


@pytest.mark.kernel
def test_stale_qgroups_are_counted_and_removed_when_the_kernel_lets_go(btrfs_mount: Path) -> None:
    # Simple quotas: a deleted volume's qgroup stays while a snapshot holds extents charged to it
    # (the kernel refuses to remove it), and becomes removable once the snapshot is gone too.
    pool = Pool.open(btrfs_mount, quota_mode="simple")
    observer = Recorder()
    reconciler = Reconciler(pool, observer)
    volume = pool.create_volume("vol", 32 * MiB)
    write_random(pool.volume_path(volume.id) / "f", 4 * MiB, seed=1)
    pool.create_snapshot("snap", volume.id)
    pool.delete_volume(volume.id)
    cli("btrfs", "subvolume", "sync", str(btrfs_mount))
    filesystem.sync(pool.root)

    assert pool.upkeep.stale_qgroups() == [volume.subvolume_id]
    reconciler.run_once()
    assert observer.stale == [1]
    assert observer.repairs[ACTION_REMOVE_STALE_QGROUP] == 0
    assert volume.subvolume_id in qgroup_show(btrfs_mount)

    pool.delete_snapshot("snap")
    cli("btrfs", "subvolume", "sync", str(btrfs_mount))
    filesystem.sync(pool.root)
    reconciler.run_once()
    assert observer.stale == [1, 1]
    assert observer.repairs[ACTION_REMOVE_STALE_QGROUP] == 1
    assert volume.subvolume_id not in qgroup_show(btrfs_mount)

    reconciler.run_once()
    assert observer.stale == [1, 1, 0] and pool.upkeep.stale_qgroups() == []
    assert observer.rounds_done == 3
    assert observer.failures == {}


@pytest.mark.kernel
def test_staging_debris_is_cleared(pool: Pool) -> None:
    observer = Recorder()
    cli("btrfs", "subvolume", "create", str(pool.staging_dir / "crashed.0123abcd"))
    (pool.staging_dir / "stray-file").write_text("left by a crash")
    Reconciler(pool, observer).run_once()
    assert list(pool.staging_dir.iterdir()) == []
    assert observer.repairs[ACTION_CLEAR_STAGING] == 2


@pytest.mark.kernel
def test_capacity_of_a_volume_deleted_by_hand_is_released(pool: Pool) -> None:
    observer = Recorder()
    empty = pool.available_capacity()
    pool.create_volume("doomed", empty // 2 // MiB * MiB)
    pool.create_volume("kept", 16 * MiB)
    promised = pool.available_capacity()
    assert promised <= empty // 2
    cli("btrfs", "subvolume", "delete", str(pool.volumes_dir / "doomed"))  # behind the driver's back
    assert pool.available_capacity() == promised  # still promised: the driver has not looked yet

    Reconciler(pool, observer).run_once()
    assert pool.available_capacity() > empty - 17 * MiB
    assert observer.repairs[ACTION_RELEASE_VANISHED] == 1
    assert observer.failures["vanished_volumes"] == 0
    assert [volume.id for volume in pool.list_volumes()] == ["kept"]
    Reconciler(pool, observer).run_once()  # nothing more to release
    assert observer.repairs[ACTION_RELEASE_VANISHED] == 1


@pytest.mark.kernel
def test_in_flight_creates_are_never_cleared(pool: Pool) -> None:
    # Pool.create_volume marks what it builds outside the pool lock (its staged subvolume, its new
    # qgroup, its reserved capacity) and the upkeep takes that lock: a reconciler running flat out must
    # never delete a volume being built, nor its qgroup.
    observer = Recorder()
    reconciler = Reconciler(pool, observer, interval=0.001)
    reconciler.start()
    try:
        for i in range(40):
            pool.create_volume(f"v{i}", 2 * MiB)
            pool.create_snapshot(f"s{i}", f"v{i}")
    finally:
        assert reconciler.stop(timeout=30)
    assert len(pool.list_volumes()) == 40
    assert len(pool.list_snapshots()) == 40
    assert observer.rounds_done > 1
    assert observer.repairs[ACTION_CLEAR_STAGING] == 0
    assert observer.failures["staging"] == 0


@pytest.mark.kernel
def test_in_flight_deletes_are_never_cleared(pool: Pool) -> None:
    # A delete renames the volume into staging and marks it as its own trash before deleting it: a
    # round that falls between the rename and the delete leaves it to the delete.
    pool.create_volume("doomed", 2 * MiB)
    real_delete = pool._fs.delete_subvolume
    trashed, resume = threading.Event(), threading.Event()

    def paused_delete(path: Path) -> None:
        if threading.current_thread().name == "deleter":
            trashed.set()
            resume.wait(30)
        real_delete(path)

    pool._fs.delete_subvolume = paused_delete  # type: ignore[method-assign]
    failures: list[BaseException] = []

    def delete() -> None:
        try:
            pool.delete_volume("doomed")
        except BaseException as exc:
            failures.append(exc)

    deleter = threading.Thread(target=delete, name="deleter")
    deleter.start()
    observer = Recorder()
    try:
        assert trashed.wait(30)
        Reconciler(pool, observer).run_once()  # the reconciler's round falls between rename and delete
    finally:
        resume.set()
        deleter.join(30)
    assert failures == []
    assert observer.repairs[ACTION_CLEAR_STAGING] == 0 and observer.failures == {}


FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x40086602, 0x10  # linux/fs.h: _IOW('f', 2, long)


def set_immutable(path: Path, immutable: bool) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", FS_IMMUTABLE_FL if immutable else 0))
    finally:
        os.close(fd)


@pytest.mark.kernel
def test_debris_that_resists_never_stops_start_up_and_is_reported_and_retried(
    btrfs_mount: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = Pool.open(btrfs_mount)
    stuck = pool.staging_dir / "stuck.0badc0de"
    cli("btrfs", "subvolume", "create", str(stuck))
    cli("btrfs", "subvolume", "create", str(pool.staging_dir / "crashed.0123abcd"))
    set_immutable(stuck, True)  # the kernel refuses to delete it (EPERM)
    observer = Recorder()
    try:
        reopened = Pool.open(btrfs_mount)  # start-up goes on, and clears what it can
        assert os.listdir(reopened.staging_dir) == [stuck.name]
        reconciler = Reconciler(reopened, observer)
        for _ in range(2):
            reconciler.run_once()
        assert observer.debris == [1, 1]
        assert observer.failures["staging"] == 0  # the step went on
        assert f"debris {stuck} not removed" in caplog.text
    finally:
        set_immutable(stuck, False)
    reconciler.run_once()
    assert os.listdir(reopened.staging_dir) == []
    assert observer.debris == [1, 1, 0]
    assert observer.repairs[ACTION_CLEAR_STAGING] == 1


class _BrokenPool:
    """Every pool call fails, as on a filesystem that went away."""

    root = Path("/nonexistent/pool")

    @property
    def stats(self) -> "_BrokenPool":
        return self

    @property
    def upkeep(self) -> "_BrokenPool":
        return self

    def __getattr__(self, name: str) -> Any:
        def fail(*args: object, **kwargs: object) -> None:
            raise OSError(5, f"Input/output error in {name}")

        return fail


def test_failures_are_logged_and_reported_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    observer = Recorder()
    reconciler = Reconciler(cast(Pool, _BrokenPool()), observer, interval=0.01)
    reconciler.run_once()
    for step in ("quota_consistency", "stale_qgroups", "staging"):
        assert observer.failures[step] == 1
    assert "Input/output error in quota_status" in caplog.text
    assert "Input/output error in clear_staging" in caplog.text
    assert observer.rounds.acquire(timeout=0)  # the round above

    reconciler.start()  # the thread survives failing rounds and keeps going
    try:
        for _ in range(3):
            assert observer.rounds.acquire(timeout=10)
    finally:
        assert reconciler.stop(timeout=10)
    assert observer.failures["staging"] >= 4
    assert observer.failures["nested_subvolumes"] >= 1


def test_stop_ends_the_wait_between_rounds() -> None:
    """With an hour between rounds, stop() ends the worker during its wait: the join, bounded far
    below the interval, finds the thread gone."""
    observer = Recorder()
    reconciler = Reconciler(cast(Pool, _BrokenPool()), observer, interval=3600)
    before = set(threading.enumerate())
    reconciler.start()
    (worker,) = [t for t in set(threading.enumerate()) - before if t.name == "btrfs-csi-reconciler"]
    assert observer.rounds.acquire(timeout=10)  # the first round runs at once, then the wait
    assert reconciler.stop(timeout=10)
    assert not worker.is_alive()
    with pytest.raises(ValueError):
        Reconciler(cast(Pool, _BrokenPool()), Recorder(), interval=0)
