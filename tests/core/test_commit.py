"""The commit every mutating call waits for, on the real kernel: it returns only once the transaction
holding the caller's change is on disk, also when callers share it, and it writes no tenant's data."""

import fcntl
import os
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from btrfs_core import filesystem, ioctl, quota, subvolume
from btrfs_core.commit import GroupCommit, Kicks
from btrfs_core.pool import Pool
from tests.tenant import as_pod, hand_to_pod

from .oracle import device_of, superblock_generation

pytestmark = pytest.mark.kernel

MiB = 1 << 20
DIRTY = 8 * MiB
# A create waiting this long waits for the kernel's periodic commit (or a stranger's sync(2)): one that
# is not held up ends within a second here, also on a loaded machine.
STALL_DEADLINE = 5.0


def test_a_commit_returns_once_the_transaction_holding_the_change_is_on_disk(btrfs_mount: Path) -> None:
    device = device_of(btrfs_mount)
    # as the pool commits
    group = GroupCommit(lambda: filesystem.generation(btrfs_mount), lambda: filesystem.commit(btrfs_mount))

    def create_and_commit(i: int) -> tuple[int, int]:
        path = btrfs_mount / f"sv-{i}"
        subvolume.create(path)
        group.commit()
        # The superblock on the device names the last transaction committed to disk.
        return superblock_generation(device), subvolume.info(path).generation

    # Concurrent callers: some share a commit, some changed something while one was running.
    with ThreadPoolExecutor(8) as callers:
        committed = list(callers.map(create_and_commit, range(32)))
    assert all(on_disk >= created_in for on_disk, created_in in committed), committed


def _write_unsynced(name: str) -> int:
    with open(name, "wb") as f:  # closed without fsync: the data stays dirty in the page cache
        return f.write(os.urandom(DIRTY))


def test_a_create_does_not_write_a_tenants_dirty_data(btrfs_mount: Path) -> None:
    """A create commits its own change only: a tenant's unwritten data is neither written nor waited
    for (it could be gigabytes). Its volume's usage counts its data once the data is on disk, so after
    the create it must count less than the tenant wrote. Another process's sync(2) could write the data
    meanwhile: the test only fails when that happens in every one of three attempts."""
    pool = Pool.open(btrfs_mount)
    volume = pool.create_volume("tenant", 256 * MiB)
    tenant = pool.volume_path(volume.id)
    hand_to_pod(tenant)
    counted = []
    for attempt in range(3):
        as_pod(tenant, lambda attempt=attempt: _write_unsynced(f"dirty-{attempt}"))  # type: ignore[misc]
        pool.create_volume(f"other-{attempt}", MiB)
        counted.append(quota.usage(btrfs_mount, volume.qgroup).referenced)  # what its qgroup counts
        if counted[-1] < (attempt + 1) * DIRTY:
            return
    pytest.fail(f"every create wrote the tenant's data: its usage after each, {counted}")


def _files_then_start_sync(count: int) -> None:
    """The pod: enough new files that the next commit writes for a while, then a START_SYNC of its own
    (any user may call it), which returns once the transaction kthread has started that commit."""
    for i in range(count):
        with open(f"file-{i:06d}-{'x' * 100}", "w"):
            pass
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, ioctl.IOC_START_SYNC, 0)
    finally:
        os.close(fd)


def test_a_tenants_commit_does_not_hold_up_the_pools_commits(btrfs_mount: Path) -> None:
    """While the transaction kthread commits a pod's transaction, the pool's START_SYNC reaches it and
    its wakeup is lost (btrfs_core.commit): without a kick the create waited for the periodic commit,
    which the commit interval here puts 300 s away (or for someone's sync(2)). Each create must end
    well before that."""
    subprocess.run(["mount", "-o", "remount,commit=300", str(btrfs_mount)], check=True, timeout=60)
    pool = Pool.open(btrfs_mount)
    tenant = pool.volume_path(pool.create_volume("tenant", 256 * MiB).id)
    hand_to_pod(tenant)
    for attempt in range(3):
        as_pod(tenant, lambda: _files_then_start_sync(20_000))
        created = threading.Event()

        def create(name: str = f"after-{attempt}", done: threading.Event = created) -> None:
            pool.create_volume(name, MiB)
            done.set()

        threading.Thread(target=create, daemon=True).start()
        try:
            assert created.wait(STALL_DEADLINE), f"create {attempt} waited over {STALL_DEADLINE} s"
        finally:
            filesystem.start_commit(btrfs_mount)  # a create still waiting must end before the unmount
            created.wait(STALL_DEADLINE)


def test_a_kick_waits_until_no_commit_is_in_progress() -> None:
    """A kick sent while the kthread writes a commit is lost and blocks its thread until the commit it
    asks for starts (btrfs_core.commit): one that falls due is sent once `quiet` has returned."""
    committed, asked, kicked = threading.Event(), threading.Event(), threading.Event()

    def quiet() -> None:  # as WAIT_SYNC does while a commit is in progress
        asked.set()
        committed.wait()

    with Kicks(after=0.001).watching(kicked.set, quiet):
        assert asked.wait(STALL_DEADLINE), "no kick fell due"
        assert not kicked.is_set(), "kicked while a commit was in progress"
        committed.set()
        assert kicked.wait(STALL_DEADLINE), "no kick once the commit was on disk"
