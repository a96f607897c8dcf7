"""What a copy of a directory tree must keep, as one comparable value: every file's bytes, type, mode,
owner, times, extended attributes, where its holes are, which names are hard links of one inode, where
symlinks point, and which files share extents (reflinks); and a tree to check it with."""

import fcntl
import hashlib
import os
import stat
import struct
from pathlib import Path
from typing import Any

MiB = 1 << 20

# linux/fiemap.h and linux/fs.h: FS_IOC_FIEMAP = _IOWR('f', 11, struct fiemap), FICLONE = _IOW(0x94, 9, int),
# FICLONERANGE = _IOW(0x94, 13, struct file_clone_range)
_FS_IOC_FIEMAP = 0xC020660B
_FICLONE = 0x40049409
_FICLONERANGE = 0x4020940D
_FIEMAP_FLAG_SYNC = 1
_FIEMAP_EXTENT_LAST = 1
_FIEMAP_HEADER = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, mapped, extent_count, reserved
_FIEMAP_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, 2 reserved, flags, 3 reserved
_EXTENTS_PER_CALL = 256


def physical_extents(path: Path) -> list[tuple[int, int]]:
    """(physical start, length) of every extent of a regular file, synced first."""
    found: list[tuple[int, int]] = []
    start = 0
    with open(path, "rb") as f:
        while True:
            buf = bytearray(_FIEMAP_HEADER.size + _EXTENTS_PER_CALL * _FIEMAP_EXTENT.size)
            _FIEMAP_HEADER.pack_into(
                buf, 0, start, (1 << 64) - 1 - start, _FIEMAP_FLAG_SYNC, 0, _EXTENTS_PER_CALL, 0
            )
            fcntl.ioctl(f.fileno(), _FS_IOC_FIEMAP, buf)
            mapped = _FIEMAP_HEADER.unpack_from(buf)[3]
            last = False
            for index in range(mapped):
                logical, physical, length, _r1, _r2, flags, *_ = _FIEMAP_EXTENT.unpack_from(
                    buf, _FIEMAP_HEADER.size + index * _FIEMAP_EXTENT.size
                )
                found.append((physical, length))
                start = logical + length
                last = bool(flags & _FIEMAP_EXTENT_LAST)
            if mapped == 0 or last:
                return found


def _data_ranges(fd: int, size: int) -> list[tuple[int, int]]:
    ranges, offset = [], 0
    while offset < size:
        try:
            begin = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: only a hole after offset
            break
        end = os.lseek(fd, begin, os.SEEK_HOLE)
        ranges.append((begin, end))
        offset = end
    return ranges


def _xattrs(path: Path, skip: set[str]) -> dict[str, bytes]:
    names = os.listxattr(path, follow_symlinks=False)
    return {
        name: os.getxattr(path, name, follow_symlinks=False) for name in sorted(names) if name not in skip
    }


def fingerprint(root: Path, skip_root_xattrs: set[str]) -> dict[str, Any]:
    """Everything a faithful copy of the tree at root keeps (the root's own xattrs in skip_root_xattrs
    left out: a volume's metadata is its own). Inode numbers and physical addresses do not appear, only
    which names share them."""
    entries: dict[str, Any] = {}
    inodes: dict[int, list[str]] = {}
    extents: dict[str, list[tuple[int, int]]] = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in ["", *dirnames, *filenames] if directory == str(root) else [*dirnames, *filenames]:
            path = Path(directory, name)
            relative = str(path.relative_to(root))
            st = path.lstat()
            entry: dict[str, Any] = {
                "mode": stat.filemode(st.st_mode),
                "owner": (st.st_uid, st.st_gid),
                "xattrs": _xattrs(path, skip_root_xattrs if relative == "." else set()),
            }
            if not stat.S_ISDIR(st.st_mode):
                entry["mtime"] = st.st_mtime_ns  # a directory's changes when the receive adds its entries
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as f:
                    entry["sha256"] = hashlib.sha256(f.read()).hexdigest()
                    entry["data"] = _data_ranges(f.fileno(), st.st_size)
                entry["size"] = st.st_size
                extents[relative] = physical_extents(path)
            elif stat.S_ISLNK(st.st_mode):
                entry["target"] = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                entry["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
            if not stat.S_ISDIR(st.st_mode):
                inodes.setdefault(st.st_ino, []).append(relative)
            entries[relative] = entry
    links = sorted(sorted(names) for names in inodes.values() if len(names) > 1)
    return {"entries": entries, "hard_links": links, "shared_extents": _sharing(extents)}


def _sharing(extents: dict[str, list[tuple[int, int]]]) -> list[tuple[str, str]]:
    """The pairs of files that share any physical byte (a hard link shares by being one inode: left out
    here, it is in hard_links)."""
    pairs = set()
    names = sorted(extents)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            if any(
                a < b + b_len and b < a + a_len
                for a, a_len in extents[first]
                for b, b_len in extents[second]
                if a and b  # 0: inline or unwritten, no address
            ):
                pairs.add((first, second))
    return sorted(pairs)


def reflink(source: Path, destination: Path, offset: int = 0, length: int = 0) -> None:
    """destination shares source's extents: the whole file, or `length` bytes at `offset` of both."""
    with open(source, "rb") as src, open(destination, "r+b" if destination.exists() else "wb") as dst:
        if length == 0:
            fcntl.ioctl(dst.fileno(), _FICLONE, src.fileno())
        else:
            args = struct.pack("=qQQQ", src.fileno(), offset, length, offset)
            fcntl.ioctl(dst.fileno(), _FICLONERANGE, args)


def populate(root: Path) -> None:
    """A tree with each kind of thing a copy can get wrong."""
    data = root / "data"
    data.mkdir(mode=0o711)
    big = data / "random.bin"
    big.write_bytes(os.urandom(3 * MiB + 12345))
    reflink(big, data / "whole-clone.bin")
    partial = data / "partial-clone.bin"
    partial.write_bytes(os.urandom(2 * MiB))
    reflink(big, partial, offset=MiB, length=MiB)
    with open(root / "sparse.img", "wb") as f:
        f.truncate(64 * MiB)
        f.seek(10 * MiB)
        f.write(os.urandom(MiB))
        f.seek(40 * MiB)
        f.write(b"x" * 4096)
    (root / "empty").touch()
    (root / "setuid").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "setuid", 0o4755)
    secret = root / "nobody-owns-this"
    secret.write_text("private\n")
    os.chown(secret, 65534, 65534)
    os.chmod(secret, 0o600)
    os.link(data / "random.bin", root / "hard-link.bin")
    os.symlink("data/random.bin", root / "relative-link")
    os.symlink("/nowhere/at/all", root / "dangling-link")
    os.setxattr(big, "user.checksum", b"abc123")
    os.setxattr(data, "user.owner", b"team-a")
    os.setxattr(root / "empty", "trusted.note", b"\x00\x01binary")
    os.mkfifo(root / "fifo")
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    deep = root.joinpath(*[f"level-{i}" for i in range(20)])
    deep.mkdir(parents=True)
    (deep / ("n" * 255)).write_text("long name\n")
    os.utime(root / "empty", ns=(1_000_000_000, 2_000_000_000))
