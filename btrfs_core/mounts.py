"""What /proc/self/mountinfo says is mounted where, and the mount syscalls (bind mount, unmount).

A mount is identified by (device, root): the filesystem's major:minor and the path inside that
filesystem that the mount shows, which for a bind mount of a volume is the volume's subvolume path
(e.g. /volumes/pvc-1). The rules of publishing a volume with these are btrfs_core.publish's.
"""

import ctypes
import ctypes.util
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from btrfs_core.errors import InvalidArgument, NotFound
from btrfs_core.ioctl import error_from_os

MOUNTINFO = Path("/proc/self/mountinfo")

# The new mount API (linux/mount.h, linux/fcntl.h): a bind mount is cloned detached, given its flags,
# then attached, so no instant shows it with the source's flags, however the driver dies.
SYS_OPEN_TREE = 428  # one number on every architecture (the unified table of asm-generic/unistd.h)
SYS_MOVE_MOUNT = 429
SYS_MOUNT_SETATTR = 442  # Linux 5.12+
OPEN_TREE_CLONE = 1
MOVE_MOUNT_F_EMPTY_PATH = 0x4
AT_EMPTY_PATH = 0x1000
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8
MOUNT_ATTR__ATIME = 0x70  # the atime setting is a value in these bits: changing it clears them all
MOUNT_ATTR_NOATIME = 0x10
MOUNT_ATTR_NODIRATIME = 0x80
UMOUNT_NOFOLLOW = 8  # never follow a symlink planted at the target
AT_FDCWD = -100  # linux/fcntl.h
RENAME_NOREPLACE = 1  # linux/fs.h: renameat2 fails with EEXIST instead of replacing

# Mount options a publish may ask for (VolumeCapability.MountVolume.mount_flags), as mount attributes.
# They are per-mount flags a bind mount can carry; filesystem options (compress=...) are the pool's.
MOUNT_OPTIONS: Mapping[str, int] = MappingProxyType(
    {
        "nosuid": MOUNT_ATTR_NOSUID,
        "nodev": MOUNT_ATTR_NODEV,
        "noexec": MOUNT_ATTR_NOEXEC,
        "noatime": MOUNT_ATTR_NOATIME,
        "nodiratime": MOUNT_ATTR_NODIRATIME,
    }
)

StrPath = str | os.PathLike[str]

_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


@dataclass(frozen=True)
class MountEntry:
    """One line of /proc/self/mountinfo (see proc(5))."""

    mount_id: int
    parent_id: int
    device: str  # major:minor of the filesystem
    root: str  # the path inside the filesystem this mount shows
    mount_point: str
    options: frozenset[str]  # per-mount options: ro/rw, nosuid, ...
    fstype: str
    source: str

    @property
    def readonly(self) -> bool:
        return "ro" in self.options

    @property
    def identity(self) -> tuple[str, str]:
        return self.device, self.root


def _unescape(field: bytes) -> str:
    # The kernel writes space, tab, newline and backslash in paths as three-digit octal escapes.
    if b"\\" not in field:
        return os.fsdecode(field)
    return os.fsdecode(_OCTAL_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def parse_mountinfo(text: bytes) -> list[MountEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split(b" ")
        try:
            sep = fields.index(b"-", 6)  # optional fields (shared:N, master:N) end at "-"
            entries.append(
                MountEntry(
                    mount_id=int(fields[0]),
                    parent_id=int(fields[1]),
                    device=fields[2].decode(),
                    root=_unescape(fields[3]),
                    mount_point=_unescape(fields[4]),
                    options=frozenset(fields[5].decode().split(",")),
                    fstype=_unescape(fields[sep + 1]),
                    source=_unescape(fields[sep + 2]),
                )
            )
        except (ValueError, IndexError):
            continue  # a line this parser does not understand describes no mount we made
    return entries


def mountinfo() -> list[MountEntry]:
    return parse_mountinfo(MOUNTINFO.read_bytes())


def _topmost(candidates: Sequence[MountEntry]) -> MountEntry | None:
    # Mounts stacked on one mount point: the visible one is the mount no other candidate sits on.
    parents = {entry.parent_id for entry in candidates}
    on_top = [entry for entry in candidates if entry.mount_id not in parents]
    return on_top[-1] if on_top else (candidates[-1] if candidates else None)


def mount_at(target: StrPath, entries: Sequence[MountEntry] | None = None) -> MountEntry | None:
    """The mount whose mount point is exactly target (symlinks resolved), or None."""
    resolved = os.path.realpath(target)
    entries = mountinfo() if entries is None else entries
    return _topmost([entry for entry in entries if entry.mount_point == resolved])


def mount_of(path: StrPath, entries: Sequence[MountEntry] | None = None) -> MountEntry | None:
    """The mount a path lies on (symlinks resolved): the visible one with the longest mount point."""
    resolved = os.path.realpath(path)
    entries = mountinfo() if entries is None else entries
    best: list[MountEntry] = []
    for entry in entries:
        point = entry.mount_point
        if is_within(resolved, point):
            if best and len(point) < len(best[0].mount_point):
                continue
            if best and len(point) > len(best[0].mount_point):
                best = []
            best.append(entry)
    return _topmost(best)


def location(path: StrPath, entries: Sequence[MountEntry] | None = None) -> tuple[str, str]:
    """(device, path inside the filesystem) of a path: what a bind mount of it shows as its identity."""
    mount = mount_of(path, entries)
    if mount is None:
        raise NotFound(f"{path} is on no mounted filesystem")
    inside = os.path.relpath(os.path.realpath(path), mount.mount_point)
    root = mount.root if inside == "." else os.path.join(mount.root, inside)
    return mount.device, root


# The mount syscalls through libc: Python has no binding, and the mount(8) CLI would be a subprocess
# per publish.
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.renameat2.restype = ctypes.c_int


class _MountAttr(ctypes.Structure):
    """struct mount_attr (linux/mount.h, MOUNT_ATTR_SIZE_VER0)."""

    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _syscall(number: int, operation: str, path: str, *args: object) -> int:
    result = int(_libc.syscall(ctypes.c_long(number), *args))
    if result < 0:
        code = ctypes.get_errno()
        raise error_from_os(operation, path, OSError(code, os.strerror(code)))
    return result


def mount_flags(options: Iterable[str]) -> int:
    """The MOUNT_ATTR_* bits of mount options; an option publish cannot set is InvalidArgument."""
    flags = 0
    for option in options:
        if option not in MOUNT_OPTIONS:
            raise InvalidArgument(f"mount option {option!r} is not one of {', '.join(sorted(MOUNT_OPTIONS))}")
        flags |= MOUNT_OPTIONS[option]
    return flags


def bind_mount(source: StrPath, target: StrPath, readonly: bool, options: Iterable[str] = ()) -> None:
    """Bind-mounts source onto target, read-only when asked, with the given per-mount options added to
    those the source's mount has (atime options replace the source's).

    One step as the kernel sees it: a detached clone of source gets its flags, then is attached at
    target. A driver killed before the attach leaves nothing (the clone dies with its descriptor).
    """
    src, tgt = os.fspath(source), os.fspath(target)
    flags = mount_flags(options) | (MOUNT_ATTR_RDONLY if readonly else 0)
    attr = _MountAttr(attr_set=flags, attr_clr=MOUNT_ATTR__ATIME if flags & MOUNT_ATTR__ATIME else 0)
    fd = _syscall(
        SYS_OPEN_TREE,
        "bind mount",
        src,
        AT_FDCWD,
        os.fsencode(src),
        ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC),
    )
    try:
        if flags:
            _syscall(
                SYS_MOUNT_SETATTR,
                "set bind mount flags",
                tgt,
                fd,
                b"",
                ctypes.c_uint(AT_EMPTY_PATH),
                ctypes.byref(attr),
                ctypes.c_size_t(ctypes.sizeof(attr)),
            )
        _syscall(
            SYS_MOVE_MOUNT,
            "attach bind mount",
            tgt,
            fd,
            b"",
            AT_FDCWD,
            os.fsencode(tgt),
            ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH),
        )
    finally:
        os.close(fd)


def unmount(target: StrPath) -> None:
    """Unmounts the topmost mount at target; a target with nothing mounted is refused (EINVAL)."""
    tgt = os.fspath(target)
    if _libc.umount2(os.fsencode(tgt), UMOUNT_NOFOLLOW) != 0:
        code = ctypes.get_errno()
        raise error_from_os("unmount", tgt, OSError(code, os.strerror(code)))


def is_within(path: str, directory: str) -> bool:
    """Whether path is directory or lies below it (both resolved, absolute)."""
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def rename_noreplace(source: str, target: str) -> None:
    """Renames source to target; FileExistsError instead of replacing anything at target."""
    if _libc.renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), RENAME_NOREPLACE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


DELETED_SUFFIX = "//deleted"  # how mountinfo shows the root of a mount whose directory was deleted


def shows(mount: MountEntry, identity: tuple[str, str]) -> bool:
    """Whether a mount shows the directory `identity` (device, path), also after it was deleted."""
    device, root = identity
    return mount.device == device and mount.root in (root, root + DELETED_SUFFIX)


def published_targets(source: StrPath) -> list[str]:
    """Every mount point showing the volume at source; btrfs itself would delete a mounted subvolume."""
    entries = mountinfo()
    identity = location(source, entries)
    return [entry.mount_point for entry in entries if entry.identity == identity]
