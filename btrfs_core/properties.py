"""The tuning of a subvolume root, which new files inherit: the btrfs.compression property (an
extended attribute the kernel interprets; no CLI needed) and FS_NOCOW_FL (FS_IOC_SETFLAGS).

The kernel refuses the pair: a compression property, even "none", on a NOCOW inode is EINVAL, and so
is NOCOW on a directory that has a compression property. So `apply` removes one before setting the other.
"""

import ctypes
import errno
import os
from pathlib import Path

from btrfs_core import ioctl
from btrfs_core.ioctl import error_from_os
from btrfs_core.models import Compression, Tuning
from btrfs_core.subvolume import opened

COMPRESSION_XATTR = "btrfs.compression"


def apply(path: Path, tuning: Tuning) -> None:
    """Makes the directory at path carry exactly `tuning` (None compression: no property)."""
    with opened(path) as fd:
        if tuning.nodatacow:
            _set_compression(fd, None, str(path))
            _set_nocow(fd, True, str(path))
        else:
            _set_nocow(fd, False, str(path))
            _set_compression(fd, tuning.compression, str(path))


def set_compression(path: Path, compression: Compression | None) -> None:
    with opened(path) as fd:
        _set_compression(fd, compression, str(path))


def nodatacow(path: Path) -> bool:
    """Whether the file or directory at path carries FS_NOCOW_FL."""
    with opened(path, os.O_RDONLY) as fd:
        return bool(_flags(fd, str(path)) & ioctl.FS_NOCOW_FL)


def compression(path: Path) -> str | None:
    """The btrfs.compression property at path, None when it has none."""
    try:
        return os.getxattr(path, COMPRESSION_XATTR, follow_symlinks=False).decode()
    except OSError as exc:
        if exc.errno == errno.ENODATA:
            return None
        raise error_from_os("read compression", str(path), exc) from None


def _set_compression(fd: int, value: Compression | None, target: str) -> None:
    try:
        if value is None:
            os.removexattr(fd, COMPRESSION_XATTR)
        else:
            os.setxattr(fd, COMPRESSION_XATTR, str(value).encode())
    except OSError as exc:
        if value is None and exc.errno == errno.ENODATA:
            return  # none to remove
        raise error_from_os("set compression", target, exc) from None


def _flags(fd: int, target: str) -> int:
    flags = ctypes.c_long()
    ioctl.call(fd, ioctl.FS_IOC_GETFLAGS, flags, "inode flags", target)
    return flags.value


def _set_nocow(fd: int, on: bool, target: str) -> None:
    flags = _flags(fd, target)
    wanted = flags | ioctl.FS_NOCOW_FL if on else flags & ~ioctl.FS_NOCOW_FL
    if wanted == flags:
        return
    ioctl.call(fd, ioctl.FS_IOC_SETFLAGS, ctypes.c_long(wanted), "set inode flags", target)
