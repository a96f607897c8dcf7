"""The filesystem as a whole: is it btrfs, how big and how full, commit to disk; and the plain file
calls the pool makes (extended attributes, directory listings), with failures as typed errors."""

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
from pathlib import Path

from btrfs_core import ioctl, mounts
from btrfs_core.commit import KICKS
from btrfs_core.errors import BtrfsCoreError, InUse, KernelError
from btrfs_core.ioctl import error_from_os
from btrfs_core.models import BlockGroups, FsUsage, PoolSpace
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


def lock_exclusively(path: Path) -> int:
    """An exclusive flock on the directory at path, as an fd to keep open: released by the kernel when
    the process dies, however it dies. InUse when another process holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise InUse(f"pool {path} is served by another process: one driver per pool") from None
        raise error_from_os("lock pool", str(path), exc) from None
    return fd


def read_only(path: Path) -> bool:
    """The filesystem at path is mounted read-only."""
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


def read_xattr(path: Path, name: str) -> bytes | None:
    """An extended attribute's value; None when the object has no such attribute. Any other
    failure (EIO, EACCES, ...) is raised: it says nothing about whether the attribute exists."""
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise error_from_os("read metadata", str(path), exc) from None


def write_xattr(path: Path, name: str, value: bytes) -> None:
    try:
        os.setxattr(path, name, value, follow_symlinks=False)
    except OSError as exc:
        raise error_from_os("write metadata", str(path), exc) from None


def remove_xattr(path: Path, name: str) -> None:
    """Removes an extended attribute; one that is not there is fine."""
    try:
        os.removexattr(path, name, follow_symlinks=False)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise error_from_os("remove metadata", str(path), exc) from None


def list_dir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError as exc:
        raise error_from_os("list", str(path), exc) from None


def scan_dir(path: Path) -> list[tuple[str, int]]:
    """Each entry's name and d_ino (on btrfs a subvolume's d_ino is its id), from the directory alone."""
    try:
        with os.scandir(path) as entries:
            return [(entry.name, entry.inode()) for entry in entries]
    except OSError as exc:
        raise error_from_os("list", str(path), exc) from None


def make_directory(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise error_from_os("make directory", str(path), exc) from None


def remove_entry(path: Path) -> None:
    """Removes a file, a symlink or a plain directory with everything in it."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError as exc:
        raise error_from_os("remove", str(path), exc) from None


def sync(path: Path) -> None:
    """Writes every file's dirty data, then commits the running transaction: what tests and tools
    use to make usage counters current."""
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_SYNC, 0, "sync", str(path))


def generation(path: Path) -> int:
    """The id of the running transaction, or of the last one when none runs (FS_INFO): a change made
    before the call is in a transaction no later than this."""
    args = ioctl.FsInfoArgs(flags=ioctl.FS_INFO_FLAG_GENERATION)
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_FS_INFO, args, "filesystem info", str(path))
    return int(args.generation)


def commit(path: Path) -> int:
    """Commits the running transaction and waits until it is on disk: every change made before the
    call survives a power cut. Returns the id of the transaction committed (every earlier one is on
    disk too). Unlike sync it writes no file data, so tenants' dirty data never holds
    it up. START_SYNC attaches to the running transaction (or, while one is committing, waits for it),
    has the transaction kthread start its commit and names it; WAIT_SYNC returns once it is committed.
    A START_SYNC whose wakeup the kthread lost is kicked once no commit is in progress (see
    btrfs_core.commit)."""
    transid = ctypes.c_uint64()
    with opened(path) as fd:
        with KICKS.watching(lambda: start_commit(path), lambda: wait_commits(path)):
            ioctl.call(fd, ioctl.IOC_START_SYNC, transid, "commit", str(path))
        ioctl.call(fd, ioctl.IOC_WAIT_SYNC, transid, "commit", str(path))
    return int(transid.value)


def start_commit(path: Path) -> None:
    """START_SYNC alone, its transaction id not asked for: a kick (never raises; the commit it kicks
    reports its own failure)."""
    with contextlib.suppress(BtrfsCoreError), opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_START_SYNC, 0, "commit", str(path))


def wait_commits(path: Path) -> None:
    """WAIT_SYNC for no transaction in particular: returns once the commit in progress, if any, is on
    disk (what a kick waits for). Never raises: a failed commit reports it to its own caller."""
    with contextlib.suppress(BtrfsCoreError), opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_WAIT_SYNC, 0, "wait for a commit", str(path))


# The kernel never allocates the first MiB of a device (BTRFS_DEVICE_RANGE_RESERVED).
DEVICE_RESERVED_BYTES = 1 << 20
_MIRRORS = {
    ioctl.BLOCK_GROUP_DUP: 2,
    ioctl.BLOCK_GROUP_RAID1: 2,
    ioctl.BLOCK_GROUP_RAID10: 2,
    ioctl.BLOCK_GROUP_RAID1C3: 3,
    ioctl.BLOCK_GROUP_RAID1C4: 4,
}


def space(path: Path) -> PoolSpace:
    """The block groups by kind and the unallocated device bytes: BTRFS_IOC_SPACE_INFO, then
    BTRFS_IOC_FS_INFO and one BTRFS_IOC_DEV_INFO per device (a few microseconds each)."""
    with opened(path) as fd:
        fs_info = ioctl.FsInfoArgs()
        ioctl.call(fd, ioctl.IOC_FS_INFO, fs_info, "filesystem info", str(path))
        unallocated = 0
        for devid in range(1, fs_info.max_id + 1):
            dev = ioctl.DevInfoArgs(devid=devid)
            try:
                ioctl.call(fd, ioctl.IOC_DEV_INFO, dev, "device info", f"{path} device {devid}")
            except KernelError as exc:
                if exc.errno == errno.ENODEV:
                    continue  # the id of a device removed from the filesystem
                raise
            unallocated += max(0, dev.total_bytes - dev.bytes_used - DEVICE_RESERVED_BYTES)
        spaces = _space_infos(fd, str(path))
    devices = int(fs_info.num_devices)
    kinds = {
        kind: _block_groups(spaces, kind, devices)
        for kind in (ioctl.BLOCK_GROUP_DATA, ioctl.BLOCK_GROUP_METADATA)
    }
    reserve = sum(total for flags, total, _used in spaces if flags & ioctl.SPACE_INFO_GLOBAL_RSV)
    mixed = any(
        flags & ioctl.BLOCK_GROUP_DATA and flags & ioctl.BLOCK_GROUP_METADATA for flags, _t, _u in spaces
    )
    return PoolSpace(
        kinds[ioctl.BLOCK_GROUP_DATA], kinds[ioctl.BLOCK_GROUP_METADATA], reserve, unallocated, mixed
    )


def _space_infos(fd: int, target: str) -> list[tuple[int, int, int]]:
    slots = 8
    while True:
        buf = bytearray(ioctl.SPACE_ARGS.size + slots * ioctl.SPACE_INFO.size)
        ioctl.SPACE_ARGS.pack_into(buf, 0, slots, 0)
        ioctl.call(fd, ioctl.IOC_SPACE_INFO, buf, "space info", target)
        _slots, total = ioctl.SPACE_ARGS.unpack_from(buf)
        if total <= slots:
            return [
                ioctl.SPACE_INFO.unpack_from(buf, ioctl.SPACE_ARGS.size + i * ioctl.SPACE_INFO.size)
                for i in range(total)
            ]
        slots = total


def _copies(flags: int, devices: int) -> float:
    for bit, mirrors in _MIRRORS.items():
        if flags & bit:
            return mirrors
    if flags & ioctl.BLOCK_GROUP_RAID5:
        return devices / max(devices - 1, 1)
    if flags & ioctl.BLOCK_GROUP_RAID6:
        return devices / max(devices - 2, 1)
    return 1  # single, RAID0


def _block_groups(spaces: list[tuple[int, int, int]], kind: int, devices: int) -> BlockGroups:
    """All block groups of a kind; while a balance converts profiles there are several: the costlier
    profile is assumed for what is still to be allocated."""
    mine = [
        (flags, total, used)
        for flags, total, used in spaces
        if flags & kind and not flags & ioctl.SPACE_INFO_GLOBAL_RSV
    ]
    return BlockGroups(
        total=sum(total for _f, total, _u in mine),
        used=sum(used for _f, _t, used in mine),
        copies=max((_copies(flags, devices) for flags, _t, _u in mine), default=1),
    )
