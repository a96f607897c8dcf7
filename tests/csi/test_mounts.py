"""btrfs_core.mounts: mountinfo parsing and path checks (no root), bind mounts on a real btrfs (kernel)."""

import os
import subprocess
from pathlib import Path

import pytest

from btrfs_core import mounts
from btrfs_core.errors import AlreadyExists, InUse, InvalidArgument, NotFound
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
    assert "subvolid=5" in entries[1].super_options


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


def test_check_target(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    (pool / "volumes").mkdir(parents=True)
    (tmp_path / "link").symlink_to(pool / "volumes")
    assert mounts.check_target(tmp_path / "pods" / "t", pool) == str(tmp_path / "pods" / "t")
    for bad in (pool, pool / "volumes" / "x", tmp_path / "link" / "x", tmp_path, Path("/")):
        with pytest.raises(InvalidArgument):
            mounts.check_target(bad, pool)
    with pytest.raises(InvalidArgument, match="absolute"):
        mounts.check_target("relative", pool)


def test_the_live_mount_table_parses() -> None:
    table = mounts.mountinfo()
    assert table and any(entry.mount_point == "/" for entry in table)


# on a real btrfs


@pytest.fixture
def volume(kernel_pool: Pool) -> Path:
    return kernel_pool.volume_path(kernel_pool.create_volume("pvc-1", 16 << 20).id)


@pytest.mark.kernel
def test_publish_with_spaces_in_the_target_path(kernel_pool: Pool, volume: Path, tmp_path: Path) -> None:
    target = tmp_path / "pod dir\twith tab" / "vol"
    target.parent.mkdir()
    publish = dict(readonly=False, exclusive=True, pool_root=kernel_pool.root)
    assert mounts.publish(volume, target, **publish) is True  # type: ignore[arg-type]
    assert mounts.publish(volume, target, **publish) is False  # type: ignore[arg-type]
    assert mounts.mounted_source(target) == mounts.location(volume)
    mounts.check_published(volume, target)
    assert mounts.published_targets(volume) == [str(target)]
    assert mounts.unpublish(volume, target, pool_root=kernel_pool.root) is True
    assert mounts.unpublish(volume, target, pool_root=kernel_pool.root) is False
    assert not target.exists() and mounts.published_targets(volume) == []


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


@pytest.mark.kernel
def test_foreign_mount_at_the_target_is_left_alone(kernel_pool: Pool, volume: Path, tmp_path: Path) -> None:
    target = tmp_path / "t"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True, timeout=30)
    try:
        with pytest.raises(AlreadyExists):
            mounts.publish(volume, target, readonly=False, exclusive=False, pool_root=kernel_pool.root)
        with pytest.raises(InUse):
            mounts.unpublish(volume, target, pool_root=kernel_pool.root)
        assert mounts.mount_at(target).fstype == "tmpfs"  # type: ignore[union-attr]
        with pytest.raises(NotFound):
            mounts.check_published(volume, target)
    finally:
        subprocess.run(["umount", str(target)], check=True, timeout=30)


@pytest.mark.kernel
def test_a_file_at_the_target_is_refused(kernel_pool: Pool, volume: Path, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a directory")
    with pytest.raises(InvalidArgument):
        mounts.publish(volume, target, readonly=False, exclusive=True, pool_root=kernel_pool.root)
    assert target.read_text() == "not a directory"


@pytest.fixture
def published(kernel_pool: Pool, volume: Path, tmp_path: Path) -> Path:
    """The volume published at tmp_path/t; the target."""
    target = tmp_path / "t"
    mounts.publish(volume, target, readonly=False, exclusive=True, pool_root=kernel_pool.root)
    return target


@pytest.mark.kernel
def test_a_published_volume_is_not_deleted_by_the_core(
    kernel_pool: Pool, volume: Path, published: Path
) -> None:
    target = published
    with pytest.raises(InUse, match="still published"):
        kernel_pool.delete_volume("pvc-1")
    assert kernel_pool.get_volume("pvc-1")
    mounts.unpublish(volume, target, pool_root=kernel_pool.root)
    kernel_pool.delete_volume("pvc-1")


@pytest.mark.kernel
def test_targets_that_are_symlinks_or_cannot_be_made_are_invalid(
    kernel_pool: Pool, volume: Path, tmp_path: Path
) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    publish = dict(readonly=False, exclusive=False, pool_root=kernel_pool.root)
    for bad in ("link", "dangling", "x" * 300, "missing/t", "file/t"):
        with pytest.raises(InvalidArgument):
            mounts.publish(volume, tmp_path / bad, **publish)  # type: ignore[arg-type]
    for bad in ("link", "dangling"):
        with pytest.raises(InvalidArgument):
            mounts.unpublish(volume, tmp_path / bad, pool_root=kernel_pool.root)
    assert sorted(os.listdir(tmp_path)) == ["dangling", "dir", "file", "link"]


@pytest.mark.kernel
def test_no_target_inside_the_pool_even_through_a_published_volume(
    kernel_pool: Pool, volume: Path, tmp_path: Path
) -> None:
    other = kernel_pool.volume_path(kernel_pool.create_volume("pvc-2", 16 << 20).id)
    mounts.publish(other, tmp_path / "other", readonly=False, exclusive=False, pool_root=kernel_pool.root)
    try:
        with pytest.raises(InvalidArgument, match="through a mount"):
            mounts.publish(
                volume, tmp_path / "other" / "t", readonly=False, exclusive=False, pool_root=kernel_pool.root
            )
        # An unpublish in the pool would rmdir an empty volume or snapshot there: refused too.
        kernel_pool.create_volume("empty", 16 << 20)
        (other / "sub").mkdir()
        for target in (kernel_pool.volumes_dir / "empty", tmp_path / "other" / "sub"):
            with pytest.raises(InvalidArgument):
                mounts.unpublish(volume, target, pool_root=kernel_pool.root)
        assert kernel_pool.get_volume("empty")
        assert os.listdir(other) == ["sub"]
    finally:
        mounts.unpublish(other, tmp_path / "other", pool_root=kernel_pool.root)


@pytest.mark.kernel
def test_unpublish_takes_down_a_mount_whose_volume_was_deleted(
    kernel_pool: Pool, volume: Path, published: Path
) -> None:
    target = published
    subprocess.run(["btrfs", "subvolume", "delete", str(volume)], check=True, capture_output=True, timeout=30)
    assert mounts.mount_at(target).root.endswith(mounts.DELETED_SUFFIX)  # type: ignore[union-attr]
    assert mounts.published_at(volume, target)
    assert mounts.unpublish(volume, target, pool_root=kernel_pool.root) is True
    assert not target.exists() and not mounts.published_at(volume, target)
