"""btrfs_core.mounts: mountinfo parsing (no root), bind mount and unmount on a real btrfs (kernel)."""

from pathlib import Path

import pytest

from btrfs_core import mounts
from btrfs_core.errors import InvalidArgument
from btrfs_core.pool import Pool

MOUNTINFO = b"""\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:40 / /pool rw,relatime shared:9 - btrfs /dev/loop3 rw,space_cache=v2,subvolid=5,subvol=/
41 22 0:40 /volumes/pvc-1 /pods/a\\040b/t rw,nosuid,nodev master:9 - btrfs /dev/loop3 rw
42 22 0:50 / /stacked rw - tmpfs tmpfs rw
43 42 0:51 / /stacked rw - tmpfs tmpfs rw
44 22 0:40 /weird\\011tab\\012nl\\134bs /w\\134x ro,noexec - btrfs /dev/loop3 ro
garbage line
"""


@pytest.fixture
def entries() -> list[mounts.MountEntry]:
    return mounts.parse_mountinfo(MOUNTINFO)


def test_parse_fields_and_escapes(entries: list[mounts.MountEntry]) -> None:
    assert len(entries) == 6  # the garbage line is skipped
    bind = entries[2]
    assert bind.mount_point == "/pods/a b/t"
    assert bind.root == "/volumes/pvc-1"
    assert bind.identity == ("0:40", "/volumes/pvc-1")
    assert bind.options == {"rw", "nosuid", "nodev"} and not bind.readonly
    assert (bind.fstype, bind.source) == ("btrfs", "/dev/loop3")
    weird = entries[5]
    assert weird.root == "/weird\ttab\nnl\\bs" and weird.mount_point == "/w\\x"
    assert weird.readonly and "noexec" in weird.options


def test_topmost_of_stacked_mounts(entries: list[mounts.MountEntry]) -> None:
    top = mounts.mount_at("/stacked", entries)
    assert top is not None and top.mount_id == 43
    assert mounts.mount_at("/nothing-here", entries) is None


def test_location_is_device_and_path_inside_the_filesystem(entries: list[mounts.MountEntry]) -> None:
    assert mounts.location("/pool/volumes/pvc-1", entries) == ("0:40", "/volumes/pvc-1")
    assert mounts.location("/pool", entries) == ("0:40", "/")
    assert mounts.location("/pods/a b/t/sub", entries) == (
        "0:40",
        "/volumes/pvc-1/sub",
    )
    assert mounts.location("/etc", entries) == ("0:21", "/etc")


def test_mount_flags() -> None:
    assert mounts.mount_flags(["nosuid", "nodev"]) == mounts.MOUNT_ATTR_NOSUID | mounts.MOUNT_ATTR_NODEV
    with pytest.raises(InvalidArgument, match="not one of"):
        mounts.mount_flags(["uid=0"])


def test_the_live_mount_table_parses() -> None:
    table = mounts.mountinfo()
    assert table and any(entry.mount_point == "/" for entry in table)


# on a real btrfs


@pytest.fixture
def volume(btrfs_mount: Path) -> Path:
    pool = Pool.open(btrfs_mount)
    return pool.volume_path(pool.create_volume("pvc-1", 16 << 20).id)


@pytest.mark.kernel
def test_read_only_bind_mount_and_unmount(volume: Path, tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    mounts.bind_mount(volume, target, readonly=True, options=["noatime"])
    mount = mounts.mount_at(target)
    assert mount is not None and mount.readonly and "noatime" in mount.options
    mounts.unmount(target)
    assert mounts.mount_at(target) is None
    with pytest.raises(Exception):  # noqa: B017 - EINVAL: nothing mounted there any more
        mounts.unmount(target)
