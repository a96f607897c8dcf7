"""Subvolumes and snapshots: create, snapshot, delete (nested first), info, list, read-only flag."""

import contextlib
import ctypes
import os
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

from btrfs_core import ioctl
from btrfs_core.errors import InvalidArgument, NotFound
from btrfs_core.models import SubvolumeInfo

# Every subvolume's root directory has this inode number.
SUBVOLUME_ROOT_INODE = 256
_ROOT_REF = struct.Struct("<QQH")  # dirid, sequence, name_len; the name follows


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


def create(path: Path) -> None:
    """A new empty subvolume at path (its parent directory must exist)."""
    args = ioctl.VolArgsV2(name=_leaf_name(path))
    with opened(path.parent) as parent:
        ioctl.call(parent, ioctl.IOC_SUBVOL_CREATE_V2, args, "subvolume create", str(path))


def snapshot(source: Path, path: Path, readonly: bool) -> None:
    """A snapshot of the subvolume at source, at path; writable unless readonly. Commits by itself."""
    name = _leaf_name(path)
    with opened(source) as src, opened(path.parent) as parent:
        args = ioctl.VolArgsV2(fd=src, flags=ioctl.SUBVOL_RDONLY if readonly else 0, name=name)
        ioctl.call(parent, ioctl.IOC_SNAP_CREATE_V2, args, "snapshot", f"{source} -> {path}")


def is_subvolume(path: Path) -> bool:
    try:
        return path.lstat().st_ino == SUBVOLUME_ROOT_INODE and path.is_dir()
    except FileNotFoundError:
        return False


def subvolume_id(path: Path) -> int:
    """The id of the subvolume that holds path."""
    args = ioctl.InoLookupArgs(treeid=0, objectid=ioctl.FIRST_FREE_OBJECTID)
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_INO_LOOKUP, args, "subvolume id", str(path))
    return int(args.treeid)


def info(path: Path) -> SubvolumeInfo:
    args = ioctl.GetSubvolInfoArgs()
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_GET_SUBVOL_INFO, args, "subvolume info", str(path))
    parent_uuid = uuid.UUID(bytes=bytes(args.parent_uuid))
    return SubvolumeInfo(
        id=args.treeid,
        name=args.name.decode(errors="surrogateescape"),
        parent_id=args.parent_id,
        uuid=uuid.UUID(bytes=bytes(args.uuid)),
        parent_uuid=None if parent_uuid.int == 0 else parent_uuid,
        generation=args.generation,
        otime=args.otime.sec + args.otime.nsec / 1e9,
        readonly=bool(args.flags & ioctl.ROOT_SUBVOL_RDONLY),
    )


def set_readonly(path: Path, readonly: bool) -> None:
    flags = ctypes.c_uint64()
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_SUBVOL_GETFLAGS, flags, "subvolume flags", str(path))
        value = (flags.value | ioctl.SUBVOL_RDONLY) if readonly else (flags.value & ~ioctl.SUBVOL_RDONLY)
        flags.value = value
        ioctl.call(fd, ioctl.IOC_SUBVOL_SETFLAGS, flags, "subvolume set flags", str(path))


def children(path: Path) -> list[Path]:
    """The subvolumes directly nested inside the subvolume at path (at any directory depth)."""
    found = []
    with opened(path) as fd:
        parent_id = subvolume_id(path)
        refs = ioctl.tree_search(
            fd,
            ioctl.ROOT_TREE,
            (parent_id, ioctl.ROOT_REF_KEY, 0),
            (parent_id, ioctl.ROOT_REF_KEY, ioctl.U64_MAX),
            str(path),
        )
        for _objectid, _type, _child_id, data in refs:
            dirid, _seq, name_len = _ROOT_REF.unpack_from(data)
            name = bytes(data[_ROOT_REF.size : _ROOT_REF.size + name_len])
            lookup = ioctl.InoLookupArgs(treeid=parent_id, objectid=dirid)
            ioctl.call(fd, ioctl.IOC_INO_LOOKUP, lookup, "path lookup", str(path))
            found.append(path / os.fsdecode(lookup.name) / os.fsdecode(name))
    return found


def delete(path: Path) -> None:
    """Deletes the subvolume at path and every subvolume nested in it, deepest first."""
    if not is_subvolume(path):
        raise NotFound(f"subvolume delete: {path} is not a subvolume")
    nested = children(path)
    if nested and info(path).readonly:
        set_readonly(path, False)  # nothing can be unlinked from a read-only subvolume (EROFS)
    for child in nested:
        delete(child)
    args = ioctl.VolArgs(name=_leaf_name(path))
    with opened(path.parent) as parent:
        ioctl.call(parent, ioctl.IOC_SNAP_DESTROY, args, "subvolume delete", str(path))


def list_all(path: Path) -> dict[int, int]:
    """Every subvolume of the filesystem holding path: id -> parent subvolume id."""
    found = {}
    with opened(path) as fd:
        backrefs = ioctl.tree_search(
            fd,
            ioctl.ROOT_TREE,
            (ioctl.FIRST_FREE_OBJECTID, ioctl.ROOT_BACKREF_KEY, 0),
            (ioctl.LAST_FREE_OBJECTID, ioctl.ROOT_BACKREF_KEY, ioctl.U64_MAX),
            str(path),
        )
        for objectid, item_type, offset, _data in backrefs:
            if item_type == ioctl.ROOT_BACKREF_KEY:
                found[objectid] = offset
    return found


def rename(source: Path, destination: Path) -> None:
    """Moves a subvolume between directories of the same filesystem: a plain rename(2)."""
    try:
        os.rename(source, destination)
    except OSError as exc:
        raise ioctl.error_from_os("rename", f"{source} -> {destination}", exc) from None
