"""btrfs_core.publish: where a target may be (no root); publishing volumes on a real btrfs (kernel)."""

import os
import subprocess
from pathlib import Path

import pytest

from btrfs_core import mounts, publish
from btrfs_core.errors import AlreadyExists, InUse, InvalidArgument, NotFound
from btrfs_core.pool import Pool
from btrfs_core.publish import Publisher


def test_check_target(tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    (pool / "volumes").mkdir(parents=True)
    (tmp_path / "link").symlink_to(pool / "volumes")
    fenced = [pool / "volumes"]
    assert publish.check_target(tmp_path / "pods" / "t", pool, fenced) == str(tmp_path / "pods" / "t")
    for bad in (pool, pool / "volumes" / "x", tmp_path / "link" / "x", tmp_path, Path("/")):
        with pytest.raises(InvalidArgument):
            publish.check_target(bad, pool, fenced)
    with pytest.raises(InvalidArgument, match="absolute"):
        publish.check_target("relative", pool, fenced)


# on a real btrfs


@pytest.fixture
def kernel_pool(btrfs_mount: Path) -> Pool:
    return Pool.open(btrfs_mount)


@pytest.fixture
def publisher(kernel_pool: Pool) -> Publisher:
    return Publisher(kernel_pool)


@pytest.fixture
def volume(kernel_pool: Pool) -> Path:
    return kernel_pool.volume_path(kernel_pool.create_volume("pvc-1", 16 << 20).id)


@pytest.mark.kernel
def test_publish_with_spaces_in_the_target_path(publisher: Publisher, volume: Path, tmp_path: Path) -> None:
    target = tmp_path / "pod dir\twith tab" / "vol"
    target.parent.mkdir()
    assert publisher.publish("pvc-1", target, readonly=False, exclusive=True) is True
    assert publisher.publish("pvc-1", target, readonly=False, exclusive=True) is False
    assert mounts.mount_at(target).identity == mounts.location(volume)  # type: ignore[union-attr]
    publisher.check_published("pvc-1", target)
    assert mounts.published_targets(volume) == [str(target)]
    assert publisher.unpublish("pvc-1", target) is True
    assert publisher.unpublish("pvc-1", target) is False
    assert not target.exists() and mounts.published_targets(volume) == []


@pytest.mark.kernel
def test_foreign_mount_at_the_target_is_left_alone(
    publisher: Publisher, volume: Path, tmp_path: Path
) -> None:
    target = tmp_path / "t"
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(target)], check=True, timeout=30)
    try:
        with pytest.raises(AlreadyExists):
            publisher.publish("pvc-1", target, readonly=False, exclusive=False)
        with pytest.raises(InUse):
            publisher.unpublish("pvc-1", target)
        assert mounts.mount_at(target).fstype == "tmpfs"  # type: ignore[union-attr]
        with pytest.raises(NotFound):
            publisher.check_published("pvc-1", target)
    finally:
        subprocess.run(["umount", str(target)], check=True, timeout=30)


@pytest.mark.kernel
def test_a_file_at_the_target_is_refused(publisher: Publisher, volume: Path, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a directory")
    with pytest.raises(InvalidArgument):
        publisher.publish("pvc-1", target, readonly=False, exclusive=True)
    assert target.read_text() == "not a directory"


@pytest.fixture
def published(publisher: Publisher, volume: Path, tmp_path: Path) -> Path:
    """The volume published at tmp_path/t; the target."""
    target = tmp_path / "t"
    publisher.publish("pvc-1", target, readonly=False, exclusive=True)
    return target


@pytest.mark.kernel
def test_a_published_volume_is_not_deleted_by_the_core(
    kernel_pool: Pool, publisher: Publisher, published: Path
) -> None:
    target = published
    with pytest.raises(InUse, match="still published"):
        kernel_pool.delete_volume("pvc-1")
    assert kernel_pool.get_volume("pvc-1")
    publisher.unpublish("pvc-1", target)
    kernel_pool.delete_volume("pvc-1")


@pytest.mark.kernel
def test_targets_that_are_symlinks_or_cannot_be_made_are_invalid(
    publisher: Publisher, volume: Path, tmp_path: Path
) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for bad in ("link", "dangling", "x" * 300, "missing/t", "file/t"):
        with pytest.raises(InvalidArgument):
            publisher.publish("pvc-1", tmp_path / bad, readonly=False, exclusive=False)
    for bad in ("link", "dangling"):
        with pytest.raises(InvalidArgument):
            publisher.unpublish("pvc-1", tmp_path / bad)
    assert sorted(os.listdir(tmp_path)) == ["dangling", "dir", "file", "link"]


@pytest.mark.kernel
def test_no_target_inside_the_pool_even_through_a_published_volume(
    kernel_pool: Pool, publisher: Publisher, volume: Path, tmp_path: Path
) -> None:
    other = kernel_pool.volume_path(kernel_pool.create_volume("pvc-2", 16 << 20).id)
    publisher.publish("pvc-2", tmp_path / "other", readonly=False, exclusive=False)
    try:
        with pytest.raises(InvalidArgument, match="through a mount"):
            publisher.publish("pvc-1", tmp_path / "other" / "t", readonly=False, exclusive=False)
        # An unpublish in the pool would rmdir an empty volume or snapshot there: refused too.
        kernel_pool.create_volume("empty", 16 << 20)
        (other / "sub").mkdir()
        for target in (kernel_pool.volumes_dir / "empty", tmp_path / "other" / "sub"):
            with pytest.raises(InvalidArgument):
                publisher.unpublish("pvc-1", target)
        assert kernel_pool.get_volume("empty")
        assert os.listdir(other) == ["sub"]
    finally:
        publisher.unpublish("pvc-2", tmp_path / "other")


@pytest.mark.kernel
def test_unpublish_takes_down_a_mount_whose_volume_was_deleted(
    publisher: Publisher, volume: Path, published: Path
) -> None:
    target = published
    subprocess.run(["btrfs", "subvolume", "delete", str(volume)], check=True, capture_output=True, timeout=30)
    assert mounts.mount_at(target).root.endswith(mounts.DELETED_SUFFIX)  # type: ignore[union-attr]
    assert publish.published_at(volume, target)
    assert publisher.unpublish("pvc-1", target) is True
    assert not target.exists() and not publish.published_at(volume, target)
    with pytest.raises(NotFound):  # gone, and nothing of it mounted there any more
        publisher.unpublish("pvc-1", target)
