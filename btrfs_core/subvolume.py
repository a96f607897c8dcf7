"""Subvolumes and snapshots: create, snapshot, delete (nested first, by ID), info, list, read-only flag."""

import contextlib
import ctypes
import errno
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from btrfs_core import ioctl, trees
from btrfs_core.errors import BtrfsCoreError, InUse, InvalidArgument, KernelError, NotFound, ReadOnly
from btrfs_core.models import SubvolumeInfo

# Every subvolume's root directory has this inode number.
SUBVOLUME_ROOT_INODE = 256
_ROOT_REF = trees.item_struct(trees.RootRef, "dirid", "name_len")  # the name follows
# A delete outruns a pod still creating subvolumes inside for this many rounds.
_DELETE_ROUNDS = 5


@contextlib.contextmanager
def opened(path: str | os.PathLike[str], flags: int = os.O_RDONLY | os.O_DIRECTORY) -> Iterator[int]:
    """A file descriptor for an ioctl, closed afterwards; a missing path is NotFound."""
    try:
        fd = os.open(path, flags | os.O_CLOEXEC)
    except OSError as exc:
        raise ioctl.error_from_os("open", str(path), exc) from None
    try:
        yield fd
    finally:
        os.close(fd)


def _leaf_name(path: Path) -> bytes:
    name = os.fsencode(path.name)
    if not name or name in (b".", b"..") or len(name) > 255:
        raise InvalidArgument(f"subvolume name {path.name!r} is not a valid directory entry")
    return name


def _in_qgroup(args: ioctl.VolArgsV2, qgroup: int | None) -> ctypes.Structure | None:
    """Makes the new subvolume's qgroup a member of `qgroup` in the same transaction that creates it;
    returns the structure args points to, which must stay alive until the ioctl returns."""
    return None if qgroup is None else ioctl.qgroup_inherit(args, [qgroup])


def create(path: Path, qgroup: int | None = None) -> None:
    """A new empty subvolume at path (its parent directory must exist), its qgroup a member of
    `qgroup` from the start when given."""
    args = ioctl.VolArgsV2(name=_leaf_name(path))
    inherit = _in_qgroup(args, qgroup)
    with opened(path.parent) as parent:
        ioctl.call(parent, ioctl.IOC_SUBVOL_CREATE_V2, args, "subvolume create", str(path))
    del inherit


def snapshot(source: Path, path: Path, readonly: bool, qgroup: int | None = None) -> None:
    """A snapshot of the subvolume at source, at path; writable unless readonly, its qgroup a member
    of `qgroup` from the start when given. Commits by itself."""
    name = _leaf_name(path)
    with opened(source) as src, opened(path.parent) as parent:
        args = ioctl.VolArgsV2(fd=src, flags=ioctl.SUBVOL_RDONLY if readonly else 0, name=name)
        inherit = _in_qgroup(args, qgroup)
        ioctl.call(parent, ioctl.IOC_SNAP_CREATE_V2, args, "snapshot", f"{source} -> {path}")
        del inherit


def is_subvolume(path: Path) -> bool:
    try:
        return path.lstat().st_ino == SUBVOLUME_ROOT_INODE and path.is_dir()
    except FileNotFoundError:
        return False


def subvolume_id(path: Path) -> int:
    """The id of the subvolume that holds path."""
    with opened(path) as fd:
        return _fd_subvolume_id(fd, str(path))


def info(path: Path) -> SubvolumeInfo:
    args = ioctl.GetSubvolInfoArgs()
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_GET_SUBVOL_INFO, args, "subvolume info", str(path))
    parent_uuid = uuid.UUID(bytes=bytes(args.parent_uuid))
    received_uuid = uuid.UUID(bytes=bytes(args.received_uuid))
    return SubvolumeInfo(
        id=args.treeid,
        name=args.name.decode(errors="surrogateescape"),
        parent_id=args.parent_id,
        uuid=uuid.UUID(bytes=bytes(args.uuid)),
        parent_uuid=None if parent_uuid.int == 0 else parent_uuid,
        generation=args.generation,
        otime=args.otime.sec + args.otime.nsec / 1e9,
        readonly=bool(args.flags & ioctl.ROOT_SUBVOL_RDONLY),
        received_uuid=None if received_uuid.int == 0 else received_uuid,
    )


def set_readonly(path: Path, readonly: bool) -> None:
    with opened(path) as fd:
        _set_readonly(fd, readonly, str(path))


def _set_readonly(fd: int, readonly: bool, target: str) -> None:
    flags = ctypes.c_uint64()
    ioctl.call(fd, ioctl.IOC_SUBVOL_GETFLAGS, flags, "subvolume flags", target)
    flags.value = (flags.value | ioctl.SUBVOL_RDONLY) if readonly else (flags.value & ~ioctl.SUBVOL_RDONLY)
    ioctl.call(fd, ioctl.IOC_SUBVOL_SETFLAGS, flags, "subvolume set flags", target)


@dataclass(frozen=True)
class _RootRef:
    """A subvolume as its holder's root ref names it: in directory `dirid` of subvolume `parent_id`."""

    id: int
    parent_id: int
    dirid: int
    name: bytes


def _root_refs(fd: int, parent_id: int, target: str) -> list[_RootRef]:
    """The subvolumes directly nested in subvolume parent_id (at any directory depth inside it)."""
    found = []
    refs = trees.tree_search(
        fd,
        ioctl.ROOT_TREE,
        (parent_id, ioctl.ROOT_REF_KEY, 0),
        (parent_id, ioctl.ROOT_REF_KEY, ioctl.U64_MAX),
        target,
    )
    for _objectid, _type, child_id, data in refs:
        dirid, name_len = _ROOT_REF.unpack_from(data)
        name = bytes(data[_ROOT_REF.size : _ROOT_REF.size + name_len])
        found.append(_RootRef(child_id, parent_id, dirid, name))
    return found


def _nested(fd: int, top_id: int, target: str) -> list[_RootRef]:
    """Every subvolume nested in subvolume top_id at any depth, each listed after the one holding it.

    A loop over the kernel's root refs, not a recursion: a pod can nest thousands of levels.
    """
    found: list[_RootRef] = []
    holders = [top_id]
    while holders:
        refs = _root_refs(fd, holders.pop(), target)
        found += refs
        holders += [ref.id for ref in refs]
    return found


def nested_paths(path: Path) -> list[str]:
    """Where the subvolumes directly nested in the subvolume at path are, relative to it, sorted.

    For messages: a directory the kernel cannot name (its path inside is longer than PATH_MAX) is
    shown as "...".
    """
    found = []
    with opened(path) as fd:
        parent_id = _fd_subvolume_id(fd, str(path))
        for ref in _root_refs(fd, parent_id, str(path)):
            lookup = ioctl.InoLookupArgs(treeid=parent_id, objectid=ref.dirid)
            try:
                ioctl.call(fd, ioctl.IOC_INO_LOOKUP, lookup, "path lookup", str(path))
                directory = os.fsdecode(lookup.name)
            except BtrfsCoreError:
                directory = ".../"
            found.append(directory + os.fsdecode(ref.name))
    return sorted(found)


def _fd_subvolume_id(fd: int, target: str) -> int:
    args = ioctl.InoLookupArgs(treeid=0, objectid=ioctl.FIRST_FREE_OBJECTID)
    ioctl.call(fd, ioctl.IOC_INO_LOOKUP, args, "subvolume id", target)
    return int(args.treeid)


_FILEID_BTRFS_WITHOUT_PARENT = 0x4D  # linux/exportfs.h
_libc = ctypes.CDLL(None, use_errno=True)


class _BtrfsFid(ctypes.Structure):
    """A btrfs file handle (struct btrfs_fid of fs/btrfs/export.h, packed, in the kernel's byte order)
    without its parent fields: inode, subvolume id and inode generation (0: not checked)."""

    _pack_ = 1
    _fields_ = [("objectid", ctypes.c_uint64), ("root_objectid", ctypes.c_uint64), ("gen", ctypes.c_uint32)]


class _FileHandle(ctypes.Structure):
    """struct file_handle of open_by_handle_at(2), carrying a _BtrfsFid."""

    _fields_ = [("handle_bytes", ctypes.c_uint32), ("handle_type", ctypes.c_int32), ("f_handle", _BtrfsFid)]


def _open_by_id(fs_fd: int, subvolume: int, inode: int, target: str) -> int:
    """A descriptor for directory `inode` of subvolume `subvolume`, found without a path (needs
    CAP_DAC_READ_SEARCH); fs_fd is any descriptor on the filesystem. Gone is NotFound."""
    fid = _BtrfsFid(objectid=inode, root_objectid=subvolume, gen=0)
    handle = _FileHandle(ctypes.sizeof(fid), _FILEID_BTRFS_WITHOUT_PARENT, fid)
    fd: int = _libc.open_by_handle_at(
        fs_fd, ctypes.byref(handle), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    )
    if fd < 0:
        code = ctypes.get_errno()
        if code == errno.ESTALE:  # the subvolume or the directory was deleted meanwhile
            code = errno.ENOENT
        raise ioctl.error_from_os("open by handle", target, OSError(code, os.strerror(code)))
    return fd


def _destroy_nested(fs_fd: int, ref: _RootRef, target: str) -> None:
    """Deletes one nested subvolume (holding none itself) by unlinking it from its directory, opened by
    handle. Deleted meanwhile is fine; a holder made read-only is made writable first (EROFS)."""
    where = f"{target}: subvolume {ref.id} in subvolume {ref.parent_id}"
    try:
        directory = _open_by_id(fs_fd, ref.parent_id, ref.dirid, where)
    except NotFound:
        return
    try:
        args = ioctl.VolArgs(name=ref.name)
        try:
            ioctl.call(directory, ioctl.IOC_SNAP_DESTROY, args, "subvolume delete", where)
        except ReadOnly:
            holder = _open_by_id(fs_fd, ref.parent_id, SUBVOLUME_ROOT_INODE, where)
            try:
                _set_readonly(holder, False, where)
            finally:
                os.close(holder)
            ioctl.call(directory, ioctl.IOC_SNAP_DESTROY, args, "subvolume delete", where)
    except NotFound:
        return
    finally:
        os.close(directory)


def delete(path: Path) -> None:
    """Deletes the subvolume at path and every subvolume nested in it, at any depth.

    The nested ones come from the kernel's root refs and go deepest first, each unlinked from its
    directory found by ID, so neither depth nor path length matters (a pod may nest thousands of
    levels or hide one below a path longer than PATH_MAX). A pod still creating subvolumes inside
    is outrun a few rounds, then InUse.
    """
    if not is_subvolume(path):
        raise NotFound(f"subvolume delete: {path} is not a subvolume")
    args = ioctl.VolArgs(name=_leaf_name(path))
    with opened(path.parent) as parent, opened(path) as top:
        top_id = _fd_subvolume_id(top, str(path))
        for _round in range(_DELETE_ROUNDS):
            for ref in reversed(_nested(top, top_id, str(path))):
                _destroy_nested(top, ref, str(path))
            try:
                ioctl.call(parent, ioctl.IOC_SNAP_DESTROY, args, "subvolume delete", str(path))
                return
            except KernelError as exc:
                if exc.errno != errno.ENOTEMPTY:  # ENOTEMPTY: a subvolume was created inside meanwhile
                    raise
    raise InUse(f"subvolume delete: {path}: subvolumes keep being created inside it")


def list_all(path: Path) -> dict[int, int]:
    """Every subvolume of the filesystem holding path: id -> parent subvolume id."""
    with opened(path) as fd:
        backrefs = trees.items_of_type(
            fd, ioctl.ROOT_TREE, ioctl.ROOT_BACKREF_KEY, str(path), ioctl.LAST_FREE_OBJECTID
        )
        return {objectid: offset for objectid, offset, _data in backrefs}


def rename(source: Path, destination: Path) -> None:
    """Moves a subvolume between directories of the same filesystem: a plain rename(2)."""
    try:
        os.rename(source, destination)
    except OSError as exc:
        raise ioctl.error_from_os("rename", f"{source} -> {destination}", exc) from None
