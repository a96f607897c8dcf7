"""The btrfs ioctls: request numbers, argument structures and one checked call.

Numbers and layouts are those of the kernel UAPI headers linux/btrfs.h and linux/btrfs_tree.h.
"""

import ctypes
import errno
import functools
import os
import struct
from collections.abc import Sequence

from btrfs_core.errors import (
    AlreadyExists,
    BtrfsCoreError,
    InsufficientCapacity,
    InUse,
    InvalidArgument,
    KernelError,
    NotFound,
    ReadOnly,
)

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64
s64 = ctypes.c_int64
U64_MAX = (1 << 64) - 1

_NONE, _WRITE, _READ = 0, 1, 2


def _ioc(direction: int, nr: int, size: int, magic: int = 0x94) -> int:
    """_IOC(direction, magic, nr, size) in the asm-generic layout (asm-generic/ioctl.h), the magic
    BTRFS_IOCTL_MAGIC unless given:
    2 direction bits, 14 size bits, 8 type bits, 8 number bits, with _IOC_WRITE 1 and _IOC_READ 2.

    That layout holds on x86, arm, arm64, riscv, s390 and loongarch. powerpc, mips, sparc and alpha use
    3 direction bits, 13 size bits and other direction values, and parisc swaps READ and WRITE: on those
    the numbers here would be wrong.
    """
    return (direction << 30) | (size << 16) | (magic << 8) | nr


class VolArgs(ctypes.Structure):
    _fields_ = [("fd", s64), ("name", ctypes.c_char * 4088)]


class VolArgsV2(ctypes.Structure):
    _fields_ = [
        ("fd", s64),
        ("transid", u64),
        ("flags", u64),
        ("size", u64),  # of the qgroup_inherit structure, with SUBVOL_QGROUP_INHERIT in flags
        ("qgroup_inherit", ctypes.c_void_p),
        ("unused", u64 * 2),
        ("name", ctypes.c_char * 4040),
    ]


# struct btrfs_qgroup_limit (the ioctl's, native byte order) and struct btrfs_qgroup_limit_item (the quota
# tree's, little-endian, as TREE_SEARCH returns it: trees.QgroupLimitItem) share one layout.
QGROUP_LIMIT_FIELDS = [
    ("flags", u64),
    ("max_rfer", u64),
    ("max_excl", u64),
    ("rsv_rfer", u64),
    ("rsv_excl", u64),
]


class QgroupLimit(ctypes.Structure):
    _fields_ = QGROUP_LIMIT_FIELDS


class QgroupInheritHead(ctypes.Structure):
    """struct btrfs_qgroup_inherit up to its flexible array of qgroup ids (see qgroup_inherit)."""

    _fields_ = [
        ("flags", u64),
        ("num_qgroups", u64),
        ("num_ref_copies", u64),
        ("num_excl_copies", u64),
        ("lim", QgroupLimit),
    ]


@functools.cache
def _qgroup_inherit_type(count: int) -> type[ctypes.Structure]:
    class QgroupInherit(ctypes.Structure):
        _fields_ = [("head", QgroupInheritHead), ("qgroups", u64 * count)]

    return QgroupInherit


def qgroup_inherit(args: VolArgsV2, qgroups: Sequence[int]) -> ctypes.Structure:
    """Points a subvolume create's or snapshot's `args` at a struct btrfs_qgroup_inherit listing
    `qgroups` (maybe none): the new subvolume's qgroup becomes a member of each in the transaction
    that makes it. Returns the structure, which must stay alive until the ioctl returns."""
    inherit = _qgroup_inherit_type(len(qgroups))()
    inherit.head.num_qgroups = len(qgroups)
    inherit.qgroups[:] = qgroups
    args.flags |= SUBVOL_QGROUP_INHERIT
    args.size = ctypes.sizeof(inherit)
    args.qgroup_inherit = ctypes.addressof(inherit)
    return inherit


class QgroupAssignArgs(ctypes.Structure):
    _fields_ = [("assign", u64), ("src", u64), ("dst", u64)]


class QgroupLimitArgs(ctypes.Structure):
    _fields_ = [("qgroupid", u64), ("lim", QgroupLimit)]


class QuotaCtlArgs(ctypes.Structure):
    _fields_ = [("cmd", u64), ("status", u64)]


class QgroupCreateArgs(ctypes.Structure):
    _fields_ = [("create", u64), ("qgroupid", u64)]


class QuotaRescanArgs(ctypes.Structure):
    _fields_ = [("flags", u64), ("progress", u64), ("reserved", u64 * 6)]


class SearchKey(ctypes.Structure):
    _fields_ = [
        ("tree_id", u64),
        ("min_objectid", u64),
        ("max_objectid", u64),
        ("min_offset", u64),
        ("max_offset", u64),
        ("min_transid", u64),
        ("max_transid", u64),
        ("min_type", u32),
        ("max_type", u32),
        ("nr_items", u32),
        ("unused", u32),
        ("unused_tail", u64 * 4),
    ]


class InoLookupArgs(ctypes.Structure):
    _fields_ = [("treeid", u64), ("objectid", u64), ("name", ctypes.c_char * 4080)]


class Timespec(ctypes.Structure):
    _fields_ = [("sec", u64), ("nsec", u32)]


class GetSubvolInfoArgs(ctypes.Structure):
    _fields_ = [
        ("treeid", u64),
        ("name", ctypes.c_char * 256),
        ("parent_id", u64),
        ("dirid", u64),
        ("generation", u64),
        ("flags", u64),
        ("uuid", u8 * 16),
        ("parent_uuid", u8 * 16),
        ("received_uuid", u8 * 16),
        ("ctransid", u64),
        ("otransid", u64),
        ("stransid", u64),
        ("rtransid", u64),
        ("ctime", Timespec),
        ("otime", Timespec),
        ("stime", Timespec),
        ("rtime", Timespec),
        ("reserved", u64 * 8),
    ]


class SendArgs(ctypes.Structure):
    _fields_ = [
        ("send_fd", s64),  # where the kernel writes the stream
        ("clone_sources_count", u64),
        ("clone_sources", ctypes.c_void_p),  # u64 subvolume ids
        ("parent_root", u64),  # 0: a full stream
        ("flags", u64),
        ("version", u32),  # with SEND_FLAG_VERSION; else stream version 1
        ("reserved", u8 * 28),
    ]


assert ctypes.sizeof(SendArgs) == 72


FS_INFO_FLAG_GENERATION = 1 << 1  # fs_info_args.flags in: fill in `generation`


class FsInfoArgs(ctypes.Structure):
    _fields_ = [
        ("max_id", u64),
        ("num_devices", u64),
        ("fsid", u8 * 16),
        ("nodesize", u32),
        ("sectorsize", u32),
        ("clone_alignment", u32),
        ("csum_type", ctypes.c_uint16),
        ("csum_size", ctypes.c_uint16),
        ("flags", u64),
        ("generation", u64),
        ("metadata_uuid", u8 * 16),
        ("reserved", u8 * 944),
    ]


class DevInfoArgs(ctypes.Structure):
    _fields_ = [
        ("devid", u64),
        ("uuid", u8 * 16),
        ("bytes_used", u64),  # raw bytes allocated to block groups on this device
        ("total_bytes", u64),
        ("unused", u64 * 379),
        ("path", ctypes.c_char * 1024),
    ]


# ioctl arguments are in native byte order (only tree items, trees.py, are little-endian on disk)
SPACE_ARGS = struct.Struct("=QQ")  # space_slots (in), total_spaces (out); then space_info[] follow
SPACE_INFO = struct.Struct("=QQQ")  # flags, total_bytes, used_bytes (logical bytes of that profile)
SEARCH_ARGS_V2_HEADER = ctypes.sizeof(SearchKey) + 8  # key + u64 buf_size, then the caller's buffer

IOC_SYNC = _ioc(_NONE, 8, 0)
IOC_WAIT_SYNC = _ioc(_WRITE, 22, 8)  # u64 transid: waits until that transaction is committed
IOC_START_SYNC = _ioc(_READ, 24, 8)  # u64 transid out: the transaction whose commit it started
IOC_SNAP_DESTROY = _ioc(_WRITE, 15, ctypes.sizeof(VolArgs))
IOC_TREE_SEARCH_V2 = _ioc(_READ | _WRITE, 17, SEARCH_ARGS_V2_HEADER)
IOC_INO_LOOKUP = _ioc(_READ | _WRITE, 18, ctypes.sizeof(InoLookupArgs))
IOC_SNAP_CREATE_V2 = _ioc(_WRITE, 23, ctypes.sizeof(VolArgsV2))
IOC_SUBVOL_CREATE_V2 = _ioc(_WRITE, 24, ctypes.sizeof(VolArgsV2))
IOC_SUBVOL_GETFLAGS = _ioc(_READ, 25, 8)
IOC_SUBVOL_SETFLAGS = _ioc(_WRITE, 26, 8)
IOC_SPACE_INFO = _ioc(_READ | _WRITE, 20, SPACE_ARGS.size)
IOC_DEV_INFO = _ioc(_READ | _WRITE, 30, ctypes.sizeof(DevInfoArgs))
IOC_FS_INFO = _ioc(_READ, 31, ctypes.sizeof(FsInfoArgs))
IOC_SEND = _ioc(_WRITE, 38, ctypes.sizeof(SendArgs))
IOC_QUOTA_CTL = _ioc(_READ | _WRITE, 40, ctypes.sizeof(QuotaCtlArgs))
IOC_QGROUP_ASSIGN = _ioc(_WRITE, 41, ctypes.sizeof(QgroupAssignArgs))
IOC_QGROUP_CREATE = _ioc(_WRITE, 42, ctypes.sizeof(QgroupCreateArgs))
IOC_QGROUP_LIMIT = _ioc(_READ, 43, ctypes.sizeof(QgroupLimitArgs))  # declared _IOR by the header
IOC_QUOTA_RESCAN = _ioc(_WRITE, 44, ctypes.sizeof(QuotaRescanArgs))
IOC_QUOTA_RESCAN_WAIT = _ioc(_NONE, 46, 0)
IOC_GET_SUBVOL_INFO = _ioc(_READ, 60, ctypes.sizeof(GetSubvolInfoArgs))
# linux/fs.h: FS_IOC_GETFLAGS _IOR('f', 1, long), FS_IOC_SETFLAGS _IOW('f', 2, long) (the kernel reads an int)
FS_IOC_GETFLAGS = _ioc(_READ, 1, ctypes.sizeof(ctypes.c_long), ord("f"))
FS_IOC_SETFLAGS = _ioc(_WRITE, 2, ctypes.sizeof(ctypes.c_long), ord("f"))
FS_NOCOW_FL = 0x00800000  # data overwritten in place: no copy-on-write, no checksums, no compression

assert ctypes.sizeof(VolArgsV2) == 4096 and ctypes.sizeof(GetSubvolInfoArgs) == 504
assert ctypes.sizeof(DevInfoArgs) == 4096 and ctypes.sizeof(FsInfoArgs) == 1024
assert ctypes.sizeof(QgroupInheritHead) == 72

SUBVOL_RDONLY = 1 << 1  # in vol_args_v2 and SUBVOL_GET/SETFLAGS
SUBVOL_QGROUP_INHERIT = 1 << 2  # vol_args_v2 carries a qgroup_inherit: the new qgroup's parents
ROOT_SUBVOL_RDONLY = 1 << 0  # the same, as the root item (GET_SUBVOL_INFO) stores it
QUOTA_CTL_ENABLE, QUOTA_CTL_ENABLE_SIMPLE = 1, 4
QGROUP_LIMIT_MAX_RFER = 1

# Block group flags (btrfs_tree.h): the type, the profile, and SPACE_INFO's global reserve entry
BLOCK_GROUP_DATA, BLOCK_GROUP_SYSTEM, BLOCK_GROUP_METADATA = 1 << 0, 1 << 1, 1 << 2
BLOCK_GROUP_RAID0, BLOCK_GROUP_RAID1, BLOCK_GROUP_DUP, BLOCK_GROUP_RAID10 = 1 << 3, 1 << 4, 1 << 5, 1 << 6
BLOCK_GROUP_RAID5, BLOCK_GROUP_RAID6 = 1 << 7, 1 << 8
BLOCK_GROUP_RAID1C3, BLOCK_GROUP_RAID1C4 = 1 << 9, 1 << 10
SPACE_INFO_GLOBAL_RSV = 1 << 49

# Trees, item types and objectids (btrfs_tree.h)
ROOT_TREE, QUOTA_TREE = 1, 8
FIRST_FREE_OBJECTID, LAST_FREE_OBJECTID = 256, U64_MAX - 255
ROOT_BACKREF_KEY, ROOT_REF_KEY = 144, 156
QGROUP_STATUS_KEY, QGROUP_INFO_KEY, QGROUP_LIMIT_KEY, QGROUP_RELATION_KEY = 240, 242, 244, 246
QGROUP_LEVEL_SHIFT = 48  # a qgroupid is level << 48 | id; level 0 qgroups belong to one subvolume each
QGROUP_STATUS_RESCAN, QGROUP_STATUS_INCONSISTENT, QGROUP_STATUS_SIMPLE = 2, 4, 8

_ERRNO_CLASSES: dict[int, type[BtrfsCoreError]] = {
    errno.ENOENT: NotFound,
    errno.EEXIST: AlreadyExists,
    errno.ENOSPC: InsufficientCapacity,
    errno.EDQUOT: InsufficientCapacity,
    errno.EBUSY: InUse,
    # A path that cannot be one: too long, or a loop of symlinks (paths come from requests).
    errno.ENAMETOOLONG: InvalidArgument,
    errno.ELOOP: InvalidArgument,
}


def error_from_os(operation: str, target: str, exc: OSError) -> BtrfsCoreError:
    """The typed error for a failed syscall: a class callers can act on, the errno kept in the text."""
    code = exc.errno or 0
    detail = f"{target}: {os.strerror(code)}"
    if code == errno.EROFS:
        return ReadOnly(operation, code, detail)
    cls = _ERRNO_CLASSES.get(code)
    return cls(f"{operation}: {detail}") if cls else KernelError(operation, code, detail)


# ioctl(2) through libc: ctypes lets go of the GIL for the call. fcntl.ioctl (CPython before 3.14) keeps
# it whenever the argument is over 1 KiB (a subvolume create, snapshot or delete, a tree search), and
# the whole driver then stood still while the kernel worked: through a snapshot's flush of its source's
# data, 150 ms of 64 MiB, another thread ran 5% of the time.
_libc = ctypes.CDLL(None, use_errno=True)
_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int


def call(
    fd: int,
    request: int,
    arg: ctypes.Structure | ctypes.c_uint64 | ctypes.c_long | bytearray | int,
    operation: str,
    target: str,
) -> None:
    """ioctl(2) with the argument updated in place; failures become typed errors."""
    if isinstance(arg, int):
        pointer: object = arg  # a value, or 0 for none
    elif isinstance(arg, bytearray):
        pointer = (ctypes.c_char * len(arg)).from_buffer(arg)
    else:
        pointer = ctypes.byref(arg)
    while _ioctl(fd, request, pointer) < 0:
        code = ctypes.get_errno()
        if code != errno.EINTR:  # a signal handled meanwhile: ask again, as fcntl.ioctl did
            raise error_from_os(operation, target, OSError(code, os.strerror(code)))
