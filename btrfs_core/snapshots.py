"""Snapshots: read-only subvolumes under snapshots/<id>, each of one volume, never recursive."""

import errno
import secrets
from collections.abc import Callable
from pathlib import Path

from btrfs_core import ids, metadata
from btrfs_core.backend import Backend
from btrfs_core.errors import AlreadyExists, InUse, KernelError, NestedSubvolumes, NotFound
from btrfs_core.models import Snapshot, Volume
from btrfs_core.qgroups import VolumeQgroups
from btrfs_core.shared import PoolShared
from btrfs_core.staging import Staging

# A refusal names this many nested subvolumes, each cut to this many characters.
_NESTED_SHOWN, _SHOWN_CHARS = 5, 80


class Snapshots:
    """The snapshots of one pool; shares the pool's lock and commit."""

    def __init__(
        self,
        shared: PoolShared,
        qgroups: VolumeQgroups,
        staging: Staging,
        check_writable: Callable[[], None],
        get_volume: Callable[[str], Volume],
    ) -> None:
        self.dir = shared.root / "snapshots"
        self._volumes_dir = shared.root / "volumes"
        self._fs, self._meta, self._lock, self._commit = shared.fs, shared.meta, shared.lock, shared.commit
        self._qgroups = qgroups
        self._staging = staging
        self._check_writable = check_writable
        self._get_volume = get_volume

    def path(self, snapshot_id: str) -> Path:
        path = self.dir / ids.check_id(snapshot_id, "snapshot")
        if not self._fs.is_subvolume(path):
            raise NotFound(f"snapshot {snapshot_id} does not exist")
        return path

    def create(self, name: str, source_volume_id: str) -> Snapshot:
        """A read-only snapshot of a volume. Idempotent by name; another source is AlreadyExists."""
        snapshot_id = ids.object_id(name, "snapshot")
        ids.check_id(source_volume_id, "volume")
        with self._lock:
            existing = self._meta.existing(self.dir / snapshot_id, self._meta.snapshot)
            if existing is not None:
                if existing.name != name or existing.source_volume_id != source_volume_id:
                    raise AlreadyExists(
                        f"snapshot {name!r} exists with source volume {existing.source_volume_id}, "
                        f"not {source_volume_id}"
                    )
            else:
                source = self._get_volume(source_volume_id)
                self._check_writable()
                self._qgroups.after_rescan()
                existing = self._build(snapshot_id, name, source)
                # Full qgroups: a snapshot of a subvolume that is a member of a level-1 qgroup marks
                # accounting inconsistent, and the kernel then enforces no limit until a rescan ends.
                self._qgroups.rescan_if_inconsistent()
        self._commit.commit()
        return existing

    def _build(self, snapshot_id: str, name: str, source: Volume) -> Snapshot:
        # Built writable under a hidden name in snapshots/, its metadata written on itself, then made
        # read-only and renamed into place (a read-only subvolume can be renamed within its directory,
        # not moved out of it): a visible snapshot is always whole, and nothing is written on, or
        # charged to, the source, which may be full to its limit or made read-only by its owner.
        origin = self._volumes_dir / source.id
        refuse_nested(self._fs, origin, f"volume {source.id}")
        fields = metadata.snapshot_fields(name, source.id, source.capacity, source.tuning)
        staged = self.dir / f".{snapshot_id}.{secrets.token_hex(4)}"
        try:
            self._fs.snapshot(origin, staged, readonly=False)
            refuse_nested(self._fs, origin, f"volume {source.id}")  # one made while the snapshot was taken
            self._qgroups.clear_limit(self._fs.subvolume_info(staged).id)  # full qgroups copy the source's
            self._meta.write(staged, fields, self._meta.snapshot_xattr)
            self._fs.set_readonly(staged, True)
            self._fs.rename(staged, self.dir / snapshot_id)
        except BaseException:
            self._staging.discard(staged)
            raise
        return self._meta.snapshot(self.dir / snapshot_id)

    def delete(self, snapshot_id: str) -> None:
        path = self.dir / ids.check_id(snapshot_id, "snapshot")
        with self._lock:
            # One ioctl unlinks it atomically (a snapshot holds no nested subvolumes), and a
            # read-only subvolume could not be renamed out of sight anyway.
            if self._fs.is_subvolume(path):
                self._check_writable()
                try:
                    self._fs.delete_subvolume(path)
                except KernelError as exc:
                    if exc.errno != errno.EPERM:
                        raise
                    raise InUse(
                        f"snapshot {snapshot_id} cannot be deleted while it is being sent (the kernel "
                        "refuses: EPERM); retry when the transfer has ended"
                    ) from None
        self._commit.commit()


def refuse_nested(backend: Backend, path: Path, what: str) -> None:
    """NestedSubvolumes when the subvolume at path holds any: a btrfs snapshot is not recursive,
    so a snapshot or clone of it would silently lack their data."""
    nested = backend.nested_subvolumes(path)
    if nested:
        shown = ", ".join(_shortened(relative) for relative in nested[:_NESTED_SHOWN])
        more = f" and {len(nested) - _NESTED_SHOWN} more" if len(nested) > _NESTED_SHOWN else ""
        raise NestedSubvolumes(
            f"{what} holds nested subvolumes, which a snapshot or clone would leave out (a btrfs "
            f"snapshot is not recursive): {shown}{more}; move their data into plain directories"
        )


def _shortened(relative: str) -> str:
    if len(relative) <= _SHOWN_CHARS:
        return relative
    half = _SHOWN_CHARS // 2
    return f"{relative[:half]}...{relative[-half:]}"
