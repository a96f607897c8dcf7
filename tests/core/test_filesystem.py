"""btrfs_core.filesystem on the real kernel: the mount check, usage against statvfs and `btrfs filesystem
df/usage`, and sync against the superblock on the device."""

import os
from pathlib import Path

import pytest

from btrfs_core import filesystem, quota, subvolume
from btrfs_core.models import QuotaMode

from .oracle import cli, device_of, filesystem_df, superblock_generation, write_random

pytestmark = pytest.mark.kernel

MiB = 1 << 20


def test_check_btrfs_mount(mount_off: Path, tmp_path: Path) -> None:
    assert filesystem.check_btrfs_mount(mount_off) is None
    (mount_off / "sub" / "dir").mkdir(parents=True)
    assert filesystem.check_btrfs_mount(mount_off / "sub" / "dir") is None
    reason = filesystem.check_btrfs_mount(tmp_path)
    assert reason is not None and "not btrfs" in reason
    assert "not a directory" in (filesystem.check_btrfs_mount(tmp_path / "absent") or "")
    (tmp_path / "file").touch()
    assert "not a directory" in (filesystem.check_btrfs_mount(tmp_path / "file") or "")


def _cli_usage(mount: Path) -> dict[str, int]:
    found = {}
    for line in cli("btrfs", "filesystem", "usage", "-b", str(mount)).splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and value.split() and value.split()[0].isdigit():
            found[key.strip()] = int(value.split()[0])
    return found


def test_usage_matches_statvfs_and_the_cli(mount_off: Path) -> None:
    before = filesystem.usage(mount_off)
    st = os.statvfs(mount_off)
    assert before.size == st.f_blocks * st.f_frsize
    assert before.used == (st.f_blocks - st.f_bfree) * st.f_frsize
    assert before.free == st.f_bavail * st.f_frsize
    shown = _cli_usage(mount_off)
    assert before.size == shown["Device size"] == 1 << 30
    assert before.free == shown["Free (statfs, df)"]
    data_before = filesystem_df(mount_off)["Data"][1]

    subvolume.create(mount_off / "fs-usage")
    write_random(mount_off / "fs-usage" / "f", 32 * MiB, seed=21)
    filesystem.sync(mount_off)
    after = filesystem.usage(mount_off)
    assert filesystem_df(mount_off)["Data"][1] - data_before == 32 * MiB
    assert 32 * MiB <= after.used - before.used <= 33 * MiB
    assert 32 * MiB <= before.free - after.free <= 33 * MiB + 8 * MiB  # a new data chunk may round up
    assert after.size == before.size


def test_sync_commits_to_the_device(mount_off: Path) -> None:
    device = device_of(mount_off)
    filesystem.sync(mount_off)
    subvolume.create(mount_off / "uncommitted")
    created_in = subvolume.info(mount_off / "uncommitted").generation
    # Creating a subvolume does not commit: the superblock on disk still names an older transaction.
    assert superblock_generation(device) < created_in
    filesystem.sync(mount_off)
    assert superblock_generation(device) >= created_in
    # Nothing dirty: a sync commits nothing new.
    on_disk = superblock_generation(device)
    filesystem.sync(mount_off)
    assert superblock_generation(device) == on_disk


def test_qgroup_counters_follow_the_commit(btrfs_mount: Path) -> None:
    quota.enable(btrfs_mount, QuotaMode.FULL)
    subvolume.create(btrfs_mount / "v")
    sid = subvolume.subvolume_id(btrfs_mount / "v")
    filesystem.sync(btrfs_mount)
    empty = quota.usage(btrfs_mount, sid).referenced
    write_random(btrfs_mount / "v" / "f", 8 * MiB, seed=22)
    # The qgroup numbers move when the transaction commits (every 30 s by itself); sync writes the
    # dirty data back and commits.
    assert quota.usage(btrfs_mount, sid).referenced == empty
    filesystem.sync(btrfs_mount)
    assert quota.usage(btrfs_mount, sid).referenced >= empty + 8 * MiB
