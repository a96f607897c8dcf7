"""Publishing a pool's volumes on this node: the rules of NodePublishVolume and NodeUnpublishVolume.

A publish bind-mounts a volume's directory at the target path the CO names (btrfs_core.mounts does the
mounting); the mount table is the node's state, so every call reads it afresh. The rules: a target is an
absolute directory outside the pool, never a symlink; a second publish with the same flags is a no-op and
with other flags ALREADY_EXISTS; the mount never carries fewer restrictions than the pool's own mount,
and never lets setuid or device files work; a target directory the driver made is marked, and only such
a directory is removed again by unpublish.
"""

import errno
import os
import secrets
from collections.abc import Iterable, Sequence

from btrfs_core import mounts
from btrfs_core.errors import AlreadyExists, InUse, InvalidArgument, NotFound, ReadOnly
from btrfs_core.ioctl import error_from_os
from btrfs_core.mounts import MountEntry, StrPath
from btrfs_core.pool import Pool
from btrfs_core.text import shortened

# Marks a target directory this driver made, so that unpublish removes only those (the CO's own
# directory is not ours to delete). The trusted namespace takes CAP_SYS_ADMIN to write, and a pod never
# sees the directory anyway: the volume is mounted over it.
TARGET_MARKER = "trusted.btrfs-csi.target"
_STAGED_TARGET_PREFIX = ".btrfs-csi-target-"

# Every publish carries these, whatever the pool's mount or the request says: a tenant's volume holds
# files the tenant wrote, and neither its setuid binaries nor its device nodes may work on the node.
ALWAYS_OPTIONS = frozenset({"nosuid", "nodev"})
# Restrictions of the pool's own mount a publish keeps (setting a bind mount's flags would drop them).
KEPT_POOL_OPTIONS = frozenset({"nosuid", "nodev", "noexec"})
ATIME_OPTIONS = frozenset({"noatime", "nodiratime"})
SHOWN_PATH_CHARS = 200  # a target may be up to 4 KiB: messages show its start


class Publisher:
    """Publishes the volumes of one pool at target paths on this node, and unpublishes them.

    Callers hold the volume's and the target's lock: two calls on one target must not interleave.
    """

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def publish(
        self,
        volume_id: str,
        target: StrPath,
        *,
        readonly: bool,
        options: Iterable[str] = (),
        exclusive: bool,
    ) -> bool:
        """Bind-mounts the volume at target; True when mounted now, False when it already was.

        ReadOnly when a read-write publish is asked of a pool mounted read-only (the pod's writes would
        fail), NotFound for an unknown volume, InvalidArgument for a target inside the pool or an option
        a publish cannot set, AlreadyExists when target shows something else or this volume with other
        flags, InUse when `exclusive` (single-writer access modes) and the volume is mounted elsewhere.
        """
        if not readonly and self._pool.stats.read_only():
            raise ReadOnly(
                "publish",
                errno.EROFS,
                f"volume {volume_id}: pool {self._pool.root} is mounted read-only, "
                "only a read-only publish is possible",
            )
        source = self._pool.volume_path(volume_id)
        return self._publish(source, target, readonly, options, exclusive)

    def unpublish(self, volume_id: str, target: StrPath) -> bool:
        """Unmounts the volume from target and removes the target directory if publish made it; True if
        unmounted. Nothing mounted there: only that directory is removed, so a repeat call succeeds.

        A volume deleted behind the driver's back while published is taken down all the same (its mount
        still holds the pod); an unknown volume with nothing of it at target is NotFound. Another
        filesystem mounted at target is left alone: InUse.
        """
        try:
            source = self._pool.volume_path(volume_id)
        except NotFound:
            source = self._pool.volume_location(volume_id)
            if not published_at(source, target):
                raise
        return self._unpublish(source, target)

    def check_published(self, volume_id: str, path: StrPath) -> None:
        """NotFound unless the volume exists and path is a mount point showing it (where it was
        published); a relative path is where no volume is."""
        source = self._pool.volume_path(volume_id)
        raw = os.fspath(path)
        if not os.path.isabs(raw):
            # Relative to nothing the caller shares with us: no mount of the volume can be there.
            raise NotFound(f"volume path {raw!r} is not absolute, so no mount of this volume")
        entries = mounts.mountinfo()
        mount = mounts.mount_at(raw, entries)
        if mount is None or mount.identity != mounts.location(source, entries):
            raise NotFound(f"volume path {raw} is not a mount of this volume")

    def _check_target(self, target: StrPath, entries: Sequence[MountEntry]) -> str:
        pool = self._pool
        directories = (pool.volumes_dir, pool.snapshots_dir, pool.staging_dir)
        return check_target(target, pool.root, directories, entries)

    def _publish(
        self, source: StrPath, target: StrPath, readonly: bool, options: Iterable[str], exclusive: bool
    ) -> bool:
        mounts.mount_flags(options)  # refuse unknown options before touching anything
        entries = mounts.mountinfo()
        resolved = self._check_target(target, entries)
        identity = mounts.location(source, entries)
        pool_mount = mounts.mount_of(source, entries)
        if pool_mount is None:
            raise NotFound(f"{source} is on no mounted filesystem")
        wanted = published_options(pool_mount, options)
        readonly = readonly or pool_mount.readonly
        current = mounts.mount_at(resolved, entries)
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
                raise InUse(
                    f"the volume is already published at {elsewhere[0]} and its access mode allows one"
                )
        created = _make_target_directory(resolved, os.fspath(target))
        try:
            mounts.bind_mount(source, resolved, readonly, wanted)
        except BaseException:
            if created:
                os.rmdir(resolved)
            raise
        return True

    def _unpublish(self, source: StrPath, target: StrPath) -> bool:
        raw = os.fspath(target)
        entries = mounts.mountinfo()
        # Never a path in the pool: the rmdir below would delete an empty volume or snapshot there.
        resolved = self._check_target(raw, entries)
        identity = mounts.location(source, entries)
        unmounted = False
        # A repeated publish racing itself could stack the same volume twice: take down every layer.
        while (current := mounts.mount_at(resolved, entries)) is not None:
            if not mounts.shows(current, identity):
                raise InUse(f"{raw} has {current.root} of {current.device} mounted, not this volume")
            mounts.unmount(resolved)
            unmounted = True
            entries = mounts.mountinfo()
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
                raise InvalidArgument(f"target path {_shown(raw)}: {os.strerror(exc.errno)}") from None
            raise error_from_os("remove target directory", raw, exc) from None
        return unmounted


def check_target(
    target: StrPath,
    pool_root: StrPath,
    pool_directories: Sequence[StrPath],
    entries: Sequence[MountEntry] | None = None,
) -> str:
    """The resolved target path, refused (InvalidArgument) when it lies inside the pool or would cover it.

    Inside the pool means by path (symlinks resolved), or inside one of `pool_directories` seen through
    another mount of the pool's filesystem, such as a volume already published elsewhere: a mount there
    would change the pool.
    """
    raw = os.fspath(target)
    if not os.path.isabs(raw):
        raise InvalidArgument(f"target path {raw!r} is not absolute")
    _no_symlink_at(raw)
    resolved = os.path.realpath(raw)
    root = os.path.realpath(pool_root)
    if mounts.is_within(resolved, root):
        raise InvalidArgument(f"target path {raw} lies inside the pool {root}")
    if mounts.is_within(root, resolved):
        raise InvalidArgument(f"target path {raw} contains the pool {root}: a mount there would hide it")
    entries = mounts.mountinfo() if entries is None else entries
    # Where the mount point itself lives: in its parent's filesystem (the target may be mounted already).
    parent, name = os.path.split(resolved)
    device, inside = mounts.location(parent, entries)
    inside = os.path.join(inside, name)
    pool_device, pool_inside = mounts.location(root, entries)
    fenced = [os.path.join(pool_inside, os.path.relpath(os.path.realpath(d), root)) for d in pool_directories]
    if device == pool_device and any(mounts.is_within(inside, directory) for directory in fenced):
        raise InvalidArgument(f"target path {raw} lies inside the pool {root} (through a mount of it)")
    return resolved


def _no_symlink_at(raw: str) -> None:
    # A mount (or rmdir) through a symlink would land where it points, not at the path the CO gave.
    if os.path.islink(raw):
        raise InvalidArgument(f"target path {raw} is a symbolic link, not a directory for a mount")


def published_options(pool_mount: MountEntry, requested: Iterable[str]) -> frozenset[str]:
    """The per-mount options a publish gets: those requested, nosuid and nodev always, the pool mount's
    nosuid, nodev and noexec, and the pool mount's atime options unless the request names its own."""
    wanted = frozenset(requested)
    kept = pool_mount.options & KEPT_POOL_OPTIONS
    atime = frozenset() if wanted & ATIME_OPTIONS else pool_mount.options & ATIME_OPTIONS
    return wanted | ALWAYS_OPTIONS | kept | atime


def _options_of(mount: MountEntry) -> frozenset[str]:
    return frozenset(option for option in mount.options if option in mounts.MOUNT_OPTIONS)


def published_at(source: StrPath, target: StrPath) -> bool:
    """Whether target has source mounted on it, even if source's subvolume has been deleted since."""
    raw = os.fspath(target)
    if not os.path.isabs(raw) or os.path.islink(raw):
        return False
    entries = mounts.mountinfo()
    mount = mounts.mount_at(raw, entries)
    return mount is not None and mounts.shows(mount, mounts.location(source, entries))


def _shown(path: str) -> str:
    return shortened(path, SHOWN_PATH_CHARS)


def _unmakeable_target(raw: str, exc: OSError) -> BaseException:
    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
        # The CO makes the target's parent directory; a path that cannot hold one is its mistake.
        return InvalidArgument(f"target path {_shown(raw)} cannot be made: {os.strerror(exc.errno)}")
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
        mounts.rename_noreplace(staged, resolved)
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
            raise InvalidArgument(f"target path {_shown(raw)}: {os.strerror(exc.errno)}") from None
        raise error_from_os("read target directory mark", raw, exc) from None
    return True
