"""The filesystem as a whole: is it btrfs, how big and how full, and commit to disk."""

import os
from pathlib import Path

from btrfs_core import ioctl
from btrfs_core.models import FsUsage
from btrfs_core.subvolume import opened

BTRFS_SUPER_MAGIC = 0x9123683E


def check_btrfs_mount(path: Path) -> str | None:
    """None when path is a directory on a mounted btrfs, else why not, in a few words."""
    if not path.is_dir():
        return f"{path} is not a directory"
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    resolved = os.path.realpath(path)
    best = ("", "")
    for line in mounts:
        fields = line.split()
        mountpoint = fields[1].replace("\\040", " ")
        inside = resolved == mountpoint or resolved.startswith(mountpoint.rstrip("/") + "/")
        if inside and len(mountpoint) >= len(best[0]):
            best = (mountpoint, fields[2])
    if best[1] != "btrfs":
        return f"{path} is on a {best[1] or 'unknown'} filesystem, not btrfs"
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
