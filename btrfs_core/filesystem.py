"""The filesystem as a whole: is it btrfs, how big and how full, and commit to disk."""

import os
from pathlib import Path

from btrfs_core import ioctl, mounts
from btrfs_core.models import FsUsage
from btrfs_core.subvolume import opened


def check_btrfs_mount(path: Path) -> str | None:
    """None when path is a directory on a mounted btrfs, else why not, in a few words."""
    if not path.is_dir():
        return f"{path} is not a directory"
    mount = mounts.mount_of(path)
    fstype = mount.fstype if mount else "unknown"
    if fstype != "btrfs":
        return f"{path} is on a {fstype} filesystem, not btrfs"
    return None


def usage(path: Path) -> FsUsage:
    """Size, used and free bytes as statfs reports them (free: what a new volume can still get)."""
    st = os.statvfs(path)
    return FsUsage(
        size=st.f_blocks * st.f_frsize,
        used=(st.f_blocks - st.f_bfree) * st.f_frsize,
        free=st.f_bavail * st.f_frsize,
    )


def sync(path: Path) -> None:
    """Commits the running transaction: everything done before it survives a power cut."""
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_SYNC, 0, "sync", str(path))
