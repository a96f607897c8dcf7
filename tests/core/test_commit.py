"""The commit every mutating call waits for, on the real kernel: it returns only once the transaction
holding the caller's change is on disk, also when callers share it, and it writes no tenant's data."""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from btrfs_core import filesystem, quota, subvolume
from btrfs_core.commit import GroupCommit
from btrfs_core.pool import Pool
from tests.tenant import as_pod, hand_to_pod

from .oracle import device_of, superblock_generation

pytestmark = pytest.mark.kernel

MiB = 1 << 20
DIRTY = 8 * MiB


def test_a_commit_returns_once_the_transaction_holding_the_change_is_on_disk(btrfs_mount: Path) -> None:
    device = device_of(btrfs_mount)
    group = GroupCommit(lambda: filesystem.commit(btrfs_mount))  # as the pool commits

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
