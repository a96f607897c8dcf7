"""Bind mounts of volumes onto target paths, and what /proc/self/mountinfo says is mounted where.

The mount table is the node's state: publishing is idempotent because it first reads mountinfo to see
what, if anything, is already mounted at the target. A mount is identified by (device, root): the
filesystem's major:minor and the path inside that filesystem that the mount shows, which for a bind
mount of a volume is the volume's subvolume path (e.g. /volumes/pvc-1).
"""

import ctypes
import ctypes.util
import errno
import os
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from btrfs_core.errors import AlreadyExists, InUse, InvalidArgument, NotFound
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

# Marks a target directory this driver made, so that unpublish removes only those (the CO's own
# directory is not ours to delete). The trusted namespace takes CAP_SYS_ADMIN to write, and a pod never
# sees the directory anyway: the volume is mounted over it.
TARGET_MARKER = "trusted.btrfs-csi.target"
_STAGED_TARGET_PREFIX = ".btrfs-csi-target-"

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

# Every publish carries these, whatever the pool's mount or the request says: a tenant's volume holds
# files the tenant wrote, and neither its setuid binaries nor its device nodes may work on the node.
ALWAYS_OPTIONS = frozenset({"nosuid", "nodev"})
# Restrictions of the pool's own mount a publish keeps (setting a bind mount's flags would drop them).
KEPT_POOL_OPTIONS = frozenset({"nosuid", "nodev", "noexec"})
ATIME_OPTIONS = frozenset({"noatime", "nodiratime"})

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
    super_options: frozenset[str]

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
                    super_options=frozenset(fields[sep + 3].decode(errors="replace").split(",")),
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
        if _is_within(resolved, point):
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


def mounted_source(target: StrPath) -> tuple[str, str] | None:
    """(device, subvolume path) of what is mounted at target, or None when nothing is."""
    mount = mount_at(target)
    return mount.identity if mount else None


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


def published_options(pool_mount: MountEntry, requested: Iterable[str]) -> frozenset[str]:
    """The per-mount options a publish gets: those requested, nosuid and nodev always, the pool mount's
    nosuid, nodev and noexec, and the pool mount's atime options unless the request names its own."""
    wanted = frozenset(requested)
    kept = pool_mount.options & KEPT_POOL_OPTIONS
    atime = frozenset() if wanted & ATIME_OPTIONS else pool_mount.options & ATIME_OPTIONS
    return wanted | ALWAYS_OPTIONS | kept | atime


def unmount(target: StrPath) -> None:
    """Unmounts the topmost mount at target; a target with nothing mounted is refused (EINVAL)."""
    tgt = os.fspath(target)
    if _libc.umount2(os.fsencode(tgt), UMOUNT_NOFOLLOW) != 0:
        code = ctypes.get_errno()
        raise error_from_os("unmount", tgt, OSError(code, os.strerror(code)))


def _is_within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


# What a pool owns below its root: a target there would be a volume's (or the driver's) directory.
POOL_DIRECTORIES = ("volumes", "snapshots", ".staging")


def _no_symlink_at(raw: str) -> None:
    # A mount (or rmdir) through a symlink would land where it points, not at the path the CO gave.
    if os.path.islink(raw):
        raise InvalidArgument(f"target path {raw} is a symbolic link, not a directory for a mount")


def check_target(target: StrPath, pool_root: StrPath, entries: Sequence[MountEntry] | None = None) -> str:
    """The resolved target path, refused when it lies inside the pool or would cover it.

    Inside the pool means by path (symlinks resolved) or through another mount of the pool's
    filesystem, such as a volume already published elsewhere: a mount there would change the pool.
    """
    raw = os.fspath(target)
    if not os.path.isabs(raw):
        raise InvalidArgument(f"target path {raw!r} is not absolute")
    _no_symlink_at(raw)
    resolved = os.path.realpath(raw)
    root = os.path.realpath(pool_root)
    if _is_within(resolved, root):
        raise InvalidArgument(f"target path {raw} lies inside the pool {root}")
    if _is_within(root, resolved):
        raise InvalidArgument(f"target path {raw} contains the pool {root}: a mount there would hide it")
    entries = mountinfo() if entries is None else entries
    # Where the mount point itself lives: in its parent's filesystem (the target may be mounted already).
    parent, name = os.path.split(resolved)
    device, inside = location(parent, entries)
    inside = os.path.join(inside, name)
    pool_device, pool_inside = location(root, entries)
    if device == pool_device and any(
        _is_within(inside, os.path.join(pool_inside, name)) for name in POOL_DIRECTORIES
    ):
        raise InvalidArgument(f"target path {raw} lies inside the pool {root} (through a mount of it)")
    return resolved


def _rename_noreplace(source: str, target: str) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(source), AT_FDCWD, os.fsencode(target), RENAME_NOREPLACE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), target)


def _unmakeable_target(raw: str, exc: OSError) -> BaseException:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
        # The CO makes the target's parent directory; a path that cannot hold one is its mistake.
        return InvalidArgument(f"target path {shown_path(raw)} cannot be made: {os.strerror(exc.errno)}")
    return error_from_os("create target directory", raw, exc)


def _make_target_directory(resolved: str, raw: str) -> bool:
    """Creates the target directory, marked as this driver's; True when made, False when a directory
    was there already (the CO's: never marked, never removed by unpublish).

    The directory is made and marked under a temporary name, then renamed into place without replacing
    anything: a crash leaves no target or a marked one, never one unpublish would take for the CO's.
    """
    if os.path.lexists(resolved):
        return _existing_directory(resolved, raw)
    staged = os.path.join(os.path.dirname(resolved), _STAGED_TARGET_PREFIX + secrets.token_hex(8))
    try:
        os.mkdir(staged, 0o750)
    except OSError as exc:
        raise _unmakeable_target(raw, exc) from None
    try:
        _mark(staged)
        _rename_noreplace(staged, resolved)
    except FileExistsError:  # made meanwhile by someone else
        os.rmdir(staged)
        return _existing_directory(resolved, raw)
    except OSError as exc:
        os.rmdir(staged)
        raise _unmakeable_target(raw, exc) from None
    except BaseException:
        os.rmdir(staged)
        raise
    return True


def _existing_directory(resolved: str, raw: str) -> bool:
    if not os.path.isdir(resolved) or os.path.islink(resolved):
        raise InvalidArgument(f"target path {raw} exists and is not a directory")
    return False


def _mark(directory: str) -> None:
    try:
        os.setxattr(directory, TARGET_MARKER, b"1", follow_symlinks=False)
    except OSError as exc:
        if exc.errno != errno.ENOTSUP:
            raise
        # No trusted xattrs on this filesystem: the directory stays unmarked, so unpublish leaves it
        # (an empty directory left behind, never a directory of the CO's removed).


def _made_by_this_driver(resolved: str, raw: str) -> bool:
    """Whether the directory at target carries the mark of _make_target_directory (False when absent)."""
    try:
        os.getxattr(resolved, TARGET_MARKER, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODATA, errno.ENOTSUP):
            return False
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
            raise InvalidArgument(f"target path {shown_path(raw)}: {os.strerror(exc.errno)}") from None
        raise error_from_os("read target directory mark", raw, exc) from None
    return True


def shown_path(path: str, limit: int = 200) -> str:
    """A path for a message, cut when long (a target may be up to 4 KiB)."""
    return path if len(path) <= limit else path[:limit] + "..."


def _options_of(mount: MountEntry) -> frozenset[str]:
    return frozenset(option for option in mount.options if option in MOUNT_OPTIONS)


def publish(
    source: StrPath,
    target: StrPath,
    *,
    readonly: bool,
    options: Iterable[str] = (),
    exclusive: bool,
    pool_root: StrPath,
) -> bool:
    """Bind-mounts a volume directory at target; True when mounted now, False when it already was.

    The mount gets `published_options`: never fewer restrictions than the pool's own mount, and never
    setuid or device files. Already mounted from the same subvolume with exactly the read-only flag
    and options this request would get: nothing to do. Something else, or the same volume with other
    flags, at target: AlreadyExists. exclusive: the volume must not be mounted anywhere else
    (single-writer access modes), else InUse. The target directory is created when absent and removed
    again if the mount fails.
    """
    mount_flags(options)  # refuse unknown options before touching anything
    entries = mountinfo()
    resolved = check_target(target, pool_root, entries)
    identity = location(source, entries)
    pool_mount = mount_of(source, entries)
    if pool_mount is None:
        raise NotFound(f"{source} is on no mounted filesystem")
    wanted = published_options(pool_mount, options)
    readonly = readonly or pool_mount.readonly
    current = mount_at(resolved, entries)
    if current is not None:
        if current.identity != identity:
            raise AlreadyExists(f"{target} already has {current.root} of {current.device} mounted")
        if current.readonly != readonly or _options_of(current) != wanted:
            raise AlreadyExists(
                f"{target} already has this volume mounted {'ro' if current.readonly else 'rw'} with "
                f"options {sorted(_options_of(current))}, not {'ro' if readonly else 'rw'} with "
                f"{sorted(wanted)} as this request asks"
            )
        return False
    if exclusive:
        elsewhere = [entry.mount_point for entry in entries if entry.identity == identity]
        if elsewhere:
            raise InUse(f"the volume is already published at {elsewhere[0]} and its access mode allows one")
    created = _make_target_directory(resolved, os.fspath(target))
    try:
        bind_mount(source, resolved, readonly, wanted)
    except BaseException:
        if created:
            os.rmdir(resolved)
        raise
    return True


def unpublish(source: StrPath, target: StrPath, *, pool_root: StrPath) -> bool:
    """Unmounts the volume at source from target and removes the target directory if publish made it;
    True if unmounted.

    Nothing mounted at target: only the (empty) directory publish made is removed, so a repeat call
    succeeds. A directory the CO made is left to the CO. A different filesystem mounted at target is
    left alone: InUse.
    """
    raw = os.fspath(target)
    entries = mountinfo()
    # Never a path in the pool: the rmdir below would delete an empty volume or snapshot there.
    resolved = check_target(raw, pool_root, entries)
    identity = location(source, entries)
    unmounted = False
    # A repeated publish racing itself could stack the same volume twice: take down every layer.
    while (current := mount_at(resolved, entries)) is not None:
        if not shows(current, identity):
            raise InUse(f"{raw} has {current.root} of {current.device} mounted, not this volume")
        unmount(resolved)
        unmounted = True
        entries = mountinfo()
    if not _made_by_this_driver(resolved, raw):
        return unmounted
    try:
        os.rmdir(resolved)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno == errno.ENOTEMPTY:
            raise InUse(f"{raw} is not empty: something other than this volume was put there") from None
        if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP):
            raise InvalidArgument(f"target path {shown_path(raw)}: {os.strerror(exc.errno)}") from None
        raise error_from_os("remove target directory", raw, exc) from None
    return unmounted


DELETED_SUFFIX = "//deleted"  # how mountinfo shows the root of a mount whose directory was deleted


def shows(mount: MountEntry, identity: tuple[str, str]) -> bool:
    """Whether a mount shows the directory `identity` (device, path), also after it was deleted."""
    device, root = identity
    return mount.device == device and mount.root in (root, root + DELETED_SUFFIX)


def published_at(source: StrPath, target: StrPath) -> bool:
    """Whether target has source mounted on it, even if source's subvolume has been deleted since."""
    raw = os.fspath(target)
    if not os.path.isabs(raw) or os.path.islink(raw):
        return False
    entries = mountinfo()
    mount = mount_at(raw, entries)
    return mount is not None and shows(mount, location(source, entries))


def check_published(source: StrPath, path: StrPath) -> None:
    """NotFound unless path is a mount point showing the volume at source (where it was published)."""
    raw = os.fspath(path)
    if not os.path.isabs(raw):
        # Relative to nothing the caller shares with us: no mount of the volume can be there.
        raise NotFound(f"volume path {raw!r} is not absolute, so no mount of this volume")
    entries = mountinfo()
    mount = mount_at(raw, entries)
    if mount is None or mount.identity != location(source, entries):
        raise NotFound(f"volume path {raw} is not a mount of this volume")


def published_targets(source: StrPath) -> list[str]:
    """Every mount point showing the volume at source; btrfs itself would delete a mounted subvolume."""
    entries = mountinfo()
    identity = location(source, entries)
    return [entry.mount_point for entry in entries if entry.identity == identity]
