"""The pool: volumes and snapshots as subvolumes of one mounted btrfs, the filesystem being the state.

Layout: <root>/volumes/<id>, <root>/snapshots/<id>, <root>/.staging/. Every object is built in
.staging and renamed into place, so a visible object is always complete; a crash leaves staging
debris that opening the pool removes. Every mutating call commits the transaction before it returns.
"""

import contextlib
import errno
import fcntl
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from btrfs_core import health, ids, metadata, quota
from btrfs_core.backend import Backend, KernelBackend
from btrfs_core.capacity import Ledger, Promise, available_bytes
from btrfs_core.commit import GroupCommit
from btrfs_core.errors import (
    AlreadyExists,
    BtrfsCoreError,
    CapacityOutOfRange,
    InsufficientCapacity,
    InUse,
    InvalidArgument,
    KernelError,
    NestedSubvolumes,
    NotFound,
    QuotaDisabled,
    ReadOnly,
)
from btrfs_core.ioctl import error_from_os
from btrfs_core.models import (
    FsUsage,
    NestedScan,
    QgroupUsage,
    QuotaMode,
    QuotaRepairs,
    QuotaStatus,
    Snapshot,
    Source,
    SourceKind,
    Volume,
    VolumeHealth,
)

MIN_VOLUME_BYTES = 1 << 20
DEFAULT_VOLUME_BYTES = 1 << 30  # the capacity of an empty volume asked for without required_bytes
MAX_VOLUME_BYTES = (1 << 63) - 1
# Each volume's level-1 qgroup is 1/(this bit | 47 random bits): a pod cannot guess a neighbour's to
# pass it to SUBVOL_CREATE_V2, and the bit tells the driver's qgroups from an operator's own.
_GROUP_MARK = 1 << 47

# A refusal names this many nested subvolumes, each cut to this many characters.
_NESTED_SHOWN, _SHOWN_CHARS = 5, 80

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Debris:
    """What one clean-up of crash debris did: entries removed, and those that resisted (relative)."""

    removed: int
    left: list[str]


class Pool:
    def __init__(self, root: Path, backend: Backend, overprovision: float = 1.0) -> None:
        self.root = root
        self.volumes_dir = root / "volumes"
        self.snapshots_dir = root / "snapshots"
        self.staging_dir = root / ".staging"
        self.overprovision = overprovision
        self._fs = backend
        self._lock = threading.Lock()  # guards existence checks, capacity accounting and renames
        self._commit = GroupCommit(backend.sync)
        self._meta = metadata.MetadataStore(backend)
        self._ledger: Ledger | None = None  # read on first use (see _capacities)
        self._exclusive_fd: int | None = None
        self._trash: set[Path] = set()  # renamed into staging by a delete that is still deleting it
        self._volume_groups: dict[int, int] | None = None  # read on first use (see _group_of_subvolume)

    @classmethod
    def open(
        cls,
        root: str | os.PathLike[str],
        quota_mode: str = "auto",
        backend: Backend | None = None,
        overprovision: float = 1.0,
        exclusive: bool = False,
    ) -> "Pool":
        """Checks the filesystem, lays out the pool, turns quotas on and clears staging debris.

        quota_mode: "auto" (simple quotas when the kernel has them, else full qgroups), "simple" or
        "full". overprovision: how far the sum of volume limits may exceed the pool's size.
        exclusive: the serving process takes an exclusive lock on the pool for as long as it lives
        (InUse when another process holds it), before clearing staging: a second driver on the same
        pool would otherwise delete what the first is building there. Readers (tests, tools) open
        without it.
        """
        path = Path(root)
        fs = backend or KernelBackend(path)
        reason = fs.check()
        if reason:
            raise InvalidArgument(f"pool {path}: {reason}")
        if quota_mode not in ("auto", "simple", "full"):
            raise InvalidArgument(f"quota mode {quota_mode!r} is not one of auto, simple, full")
        if not overprovision >= 1.0:
            raise InvalidArgument(f"overprovision ratio {overprovision} is below 1.0")
        pool = cls(path, fs, overprovision)
        if exclusive:
            pool._lock_exclusively()
        try:
            for directory in (pool.volumes_dir, pool.snapshots_dir, pool.staging_dir):
                directory.mkdir(mode=0o700, exist_ok=True)
            pool._ensure_quota(quota_mode)
            pool.clear_staging()
        except BaseException:
            pool.close()
            raise
        return pool

    def _lock_exclusively(self) -> None:
        # flock on the root directory: released by the kernel when the process dies, however it dies.
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise InUse(f"pool {self.root} is served by another process: one driver per pool") from None
            raise error_from_os("lock pool", str(self.root), exc) from None
        self._exclusive_fd = fd

    def close(self) -> None:
        """Releases the exclusive lock, if this pool holds it."""
        if self._exclusive_fd is not None:
            os.close(self._exclusive_fd)
            self._exclusive_fd = None

    def _ensure_quota(self, wanted: str) -> None:
        """Turns quotas on when they are off: in the configured mode, or with "auto" in the mode the
        pool had (recorded on its root whenever the driver sees quotas on), else simple quotas when
        the kernel has them. The limits come back with repair_quotas."""
        mode = self._fs.quota_status().mode
        if mode is QuotaMode.OFF:
            recorded = self._meta.quota_mode(self.root)
            if wanted != "auto":
                self._fs.enable_quota(QuotaMode(wanted))
            elif recorded is not None:
                log.warning("quotas were off on pool %s: enabling its mode, %s", self.root, recorded.value)
                self._fs.enable_quota(recorded)
            else:
                try:
                    self._fs.enable_quota(QuotaMode.SIMPLE)
                except KernelError as exc:
                    if exc.errno != errno.EINVAL:  # EINVAL: this kernel has no simple quotas
                        raise
                    self._fs.enable_quota(QuotaMode.FULL)
            mode = self._fs.quota_status().mode
            self._commit.commit()
        elif wanted != "auto" and mode is not QuotaMode(wanted):
            raise InvalidArgument(
                f"pool {self.root} already uses {mode.value} quotas, not {wanted}; "
                "switching needs quotas disabled first"
            )
        if mode is not QuotaMode.OFF and self._meta.quota_mode(self.root) is not mode:
            self._meta.record_quota_mode(self.root, mode)

    # IDs

    @staticmethod
    def volume_id(name: str) -> str:
        """The volume ID for a CSI name: the name itself when safe, else a hash of it."""
        return ids.object_id(name, "volume")

    @staticmethod
    def snapshot_id(name: str) -> str:
        return ids.object_id(name, "snapshot")

    def volume_location(self, volume_id: str) -> Path:
        """Where a volume is, or was: volumes/<id>, whether it exists or not."""
        return self.volumes_dir / ids.check_id(volume_id, "volume")

    def volume_path(self, volume_id: str) -> Path:
        path = self.volume_location(volume_id)
        if not self._fs.is_subvolume(path):
            raise NotFound(f"volume {volume_id} does not exist")
        return path

    def _snapshot_path(self, snapshot_id: str) -> Path:
        path = self.snapshots_dir / ids.check_id(snapshot_id, "snapshot")
        if not self._fs.is_subvolume(path):
            raise NotFound(f"snapshot {snapshot_id} does not exist")
        return path

    def _ids(self, directory: Path) -> list[str]:
        """The names in a directory that are IDs this driver could have made, sorted."""
        return ids.ids_among(self._fs.list_dir(directory))

    def _list(self, directory: Path, read: Callable[[Path], T], ids: Iterable[str] | None) -> list[T]:
        found = []
        for entry in self._ids(directory) if ids is None else ids:
            try:
                found.append(read(directory / entry))
            except NotFound:
                continue  # vanished meanwhile, or not ours; a failure to read is raised
        return found

    @property
    def _capacities(self) -> Ledger:
        """Every volume's capacity, read from the pool on first use (needs the lock): the driver
        answers Probe before it has read 10,000 volumes' metadata; the first create pays for it."""
        if self._ledger is None:
            self._ledger = Ledger(self._scan_capacities())
        return self._ledger

    def _scan_capacities(self) -> dict[str, Promise]:
        """Every volume's capacity and subvolume: one getxattr and one subvolume-info ioctl each
        (10,000 volumes in well under a second)."""
        found = {}
        for entry in self._ids(self.volumes_dir):
            path = self.volumes_dir / entry
            try:
                meta = self._meta.volume_meta(path)
                qgroup = metadata.group_of(meta) or self._fs.subvolume_info(path).id
            except NotFound:
                continue  # vanished meanwhile, or not ours; a failure to read is raised
            found[entry] = Promise(int(meta["capacity"]), qgroup)
        return found

    # volumes

    def get_volume(self, volume_id: str) -> Volume:
        return self._meta.volume(self.volume_path(volume_id))

    def list_volume_ids(self) -> list[str]:
        """The IDs in volumes/, sorted: cheap to page through before reading any volume."""
        return self._ids(self.volumes_dir)

    def list_volumes(self, ids: Iterable[str] | None = None) -> list[Volume]:
        """Every volume, or those of `ids` that exist (in that order)."""
        return self._list(self.volumes_dir, self._meta.volume, ids)

    def create_volume(
        self,
        name: str,
        required: int = 0,
        source: Source | None = None,
        metadata: Mapping[str, str] | None = None,
        limit: int = 0,
    ) -> Volume:
        """A new volume, empty or an instant writable snapshot of `source`, of at least `required` and
        at most `limit` bytes (0: no bound): the CSI capacity range, decided here (`_capacity_for`).

        Idempotent: an existing volume of this name, source and metadata whose capacity lies in the
        range is the answer; any other volume under the same name raises AlreadyExists.
        """
        volume_id = self.volume_id(name)
        _check_range(required, limit)
        wanted = dict(metadata or {})
        with self._lock:
            existing = self._existing(self.volumes_dir / volume_id, self._meta.volume)
            if existing is not None:
                _same_volume(existing, name, required, limit, source, wanted)
            else:
                capacity = self._capacity_for(required, limit, source)
                existing = self._build_volume(volume_id, name, capacity, source, wanted)
        self._commit.commit()
        return existing

    def _capacity_for(self, required: int, limit: int, source: Source | None) -> int:
        """The capacity of a new volume: `required` (at least the smallest volume); without it the
        source's size, or DEFAULT_VOLUME_BYTES cut to the limit. Never below the source's size (its
        data could not be written back), never above the limit: CapacityOutOfRange."""
        size = self._source_size(source) if source is not None else 0
        if required:
            capacity = max(required, MIN_VOLUME_BYTES)
            if source is not None and capacity < size:
                raise CapacityOutOfRange(
                    f"capacity_range: required_bytes {required} is smaller than {source.kind.value} "
                    f"{source.id} ({size} bytes)"
                )
        else:
            capacity = max(size or min(DEFAULT_VOLUME_BYTES, limit or DEFAULT_VOLUME_BYTES), MIN_VOLUME_BYTES)
        if limit and capacity > limit:
            raise CapacityOutOfRange(
                f"capacity_range: limit_bytes {limit} is below {capacity} bytes, the least this volume "
                "can have (the smallest volume, or its source's size)"
            )
        _check_capacity(capacity)
        return capacity

    def _source_size(self, source: Source) -> int:
        if source.kind is SourceKind.SNAPSHOT:
            return self._snapshot_at(self._snapshot_path(source.id)).size
        return self._volume_at(self.volume_path(source.id)).capacity

    def _existing(self, path: Path, read: Callable[[Path], T]) -> T | None:
        """The object at path, None when the name is free; AlreadyExists when something this driver
        did not make (no metadata, not a subvolume) holds the name: it is neither reused nor replaced."""
        if not os.path.lexists(path):
            return None
        if self._fs.is_subvolume(path):
            with contextlib.suppress(NotFound):
                return read(path)
        raise AlreadyExists(f"{path.parent.name}/{path.name} holds something this driver did not make")

    def _check_writable(self, limits: bool = False) -> None:
        """Refuses, with the reason, a change the pool cannot make now: it is mounted read-only
        (ReadOnly), or, for a change that sets a limit, its quotas were turned off (QuotaDisabled)."""
        if self.read_only():
            raise ReadOnly(
                f"pool {self.root}", errno.EROFS, "mounted read-only: volumes and snapshots cannot change"
            )
        if limits and self._fs.quota_status().mode is QuotaMode.OFF:
            raise QuotaDisabled(
                f"quotas are off on pool {self.root} (disabled behind the driver's back): no capacity can "
                "be enforced until they are on again (restarting the driver turns them on)"
            )

    def _build_volume(
        self, volume_id: str, name: str, capacity: int, source: Source | None, meta: dict[str, str]
    ) -> Volume:
        origin = self._source_path(source, capacity)
        self._check_writable(limits=True)
        self._reserve(volume_id, capacity)
        staged = self._staging_path(volume_id)
        group = None
        try:
            if origin is not None:
                self._after_rescan()
            # The level-1 qgroup first, the subvolume born inside it: a crash in between leaves an
            # empty qgroup that no volume names, which repair_quotas removes.
            group = self._new_group()
            if origin is None:
                self._fs.create_subvolume(staged, group)
            else:
                self._fs.snapshot(origin, staged, readonly=False, qgroup=group)
                if source and source.kind is SourceKind.VOLUME:  # one a pod nested meanwhile
                    self._refuse_nested(origin, f"volume {source.id}")
            self._meta.write(staged, metadata.volume_fields(name, capacity, group, source, meta))
            self._meta.forget_snapshot(staged)  # copied from a snapshot source
            # The limit on the level-1 qgroup only: a read-only snapshot of the volume inherits
            # nothing from its 0/N.
            self._capacities.put(volume_id, capacity, group)
            self._fs.set_limit(group, capacity)
            self._fs.rename(staged, self.volumes_dir / volume_id)
        except BaseException:
            self._capacities.pop(volume_id)
            self._discard(staged)
            if group is not None:
                self._drop_group(group)
            raise
        volume = self._meta.volume(self.volumes_dir / volume_id)
        self._group_of_subvolume()[volume.subvolume_id] = group
        if origin is not None:
            # Full qgroups: a snapshot joining a new qgroup leaves its counters inconsistent.
            self._rescan_if_inconsistent()
        return volume

    def _new_group(self) -> int:
        group = quota.LEVEL1 | _GROUP_MARK | secrets.randbits(47)
        self._fs.create_qgroup(group)
        return group

    def _drop_group(self, group: int) -> bool:
        """Destroys a volume's level-1 qgroup; False when it cannot go yet (a member the cleaner has
        not dropped: EBUSY): repair_quotas retries it as an orphan."""
        try:
            self._fs.destroy_qgroup(group)
        except NotFound:
            return True
        except BtrfsCoreError as exc:
            log.debug("qgroup %s not removed yet: %s", quota.show(group), exc)
            return False
        return True

    def _rescan_if_inconsistent(self) -> None:
        """Full qgroups: a rescan when accounting is inconsistent, waited for: the kernel enforces no
        limit until it ends. The flag is read from the quota tree, as of the last commit: callers
        commit first (a snapshot commits by itself)."""
        status = self._fs.quota_status()
        if status.mode is QuotaMode.FULL and status.inconsistent:
            self._fs.rescan_quota()
            self._fs.wait_rescan()

    def _after_rescan(self) -> None:
        """Full qgroups: waits for a running rescan before a qgroup change (a snapshot or clone of a
        volume, an assignment). A change made while one runs is missing from its result, which then
        says consistent with wrong numbers and no limit enforced (measured on 6.18)."""
        if self._fs.quota_status().mode is QuotaMode.FULL:
            self._fs.wait_rescan()

    def _source_path(self, source: Source | None, capacity: int) -> Path | None:
        if source is None:
            return None
        if source.kind is SourceKind.SNAPSHOT:
            path = self._snapshot_path(source.id)
            size = self._meta.snapshot(path).size
        else:
            path = self.volume_path(source.id)
            size = self._meta.volume(path).capacity
            self._refuse_nested(path, f"volume {source.id}")
        if capacity < size:
            raise CapacityOutOfRange(
                f"capacity {capacity} is smaller than {source.kind.value} {source.id} ({size} bytes)"
            )
        return path

    def _staging_path(self, object_id: str) -> Path:
        return self.staging_dir / f"{object_id}.{secrets.token_hex(4)}"

    def _discard(self, staged: Path) -> None:
        if self._fs.is_subvolume(staged):
            self._fs.delete_subvolume(staged)

    def _reserve(self, volume_id: str, size: int) -> None:
        """Accounts capacity for a volume, or refuses when the pool cannot hold it. Needs the lock.

        Only what the volume has not written yet needs room (it has, when it grows).
        """
        written = self._written_by_volume()
        available = self._available(written, exclude=volume_id)
        needed = size - written.get(volume_id, 0)
        if needed > available:
            raise InsufficientCapacity(
                f"volume {volume_id}: {size} bytes requested, {needed} of them not written yet; "
                f"the pool has {available} available"
            )
        promise = self._capacities.get(volume_id)
        self._capacities.put(volume_id, size, promise.qgroup if promise else None)

    def _written_by_volume(self) -> dict[str, int]:
        """What each volume has written, by volume id: the exclusive bytes of the qgroup that carries
        its limit (volume_usage's, nested subvolumes included), every qgroup read in one TREE_SEARCH.
        The one place the capacity model reads volumes' usage."""
        exclusive = self._fs.exclusive_all()
        return {
            volume_id: exclusive[qgroup]
            for volume_id, qgroup in self._capacities.qgroups().items()
            if qgroup in exclusive
        }

    def _available(self, written: Mapping[str, int], exclude: str | None = None) -> int:
        unwritten = self._capacities.unwritten(written, exclude)
        return available_bytes(self._fs.space(), unwritten, self.overprovision)

    def available_capacity(self) -> int:
        """The largest volume that can be created now (what GetCapacity reports): 0 on a read-only
        pool, which can take no volume and no write."""
        if self.read_only():
            return 0
        with self._lock:
            return self._available(self._written_by_volume())

    def read_only(self) -> bool:
        """The pool is mounted read-only: neither the driver nor any pod can write to it."""
        return self._fs.read_only()

    def release_vanished_volumes(self) -> list[str]:
        """Forgets the capacity of volumes deleted behind the driver's back (a subvolume deleted by
        hand): it is free again. Returns their ids."""
        with self._lock:
            if self._ledger is None:
                return []  # not read yet: the first read sees only the volumes that exist
            gone = sorted(self._ledger.ids() - set(self._ids(self.volumes_dir)))
            for volume_id in gone:
                self._ledger.pop(volume_id)
        for volume_id in gone:
            log.warning("volume %s was deleted behind the driver's back: its capacity is released", volume_id)
        return gone

    def delete_volume(self, volume_id: str) -> None:
        """Deletes a volume and anything nested in it; its snapshots live on. Absent is fine.

        A volume bind-mounted somewhere (published) is refused with InUse: btrfs itself would delete
        it under the workload using it.
        """
        path = self.volume_location(volume_id)
        group = None
        with self._lock:
            trash = None
            if self._fs.is_subvolume(path):
                published = self._fs.published_targets(path)
                if published:
                    raise InUse(f"volume {volume_id} is still published at {published[0]}")
                self._check_writable()
                with contextlib.suppress(NotFound):  # not ours; a failure to read is raised
                    group = metadata.group_of(self._meta.read(path))
                info = self._fs.subvolume_info(path)
                if info.readonly:
                    # Made read-only from inside (its owner may): it could not leave volumes/ (EROFS).
                    self._fs.set_readonly(path, False)
                # Out of sight first: a crash mid-delete leaves staging debris, never half a volume.
                trash = self._staging_path(volume_id)
                self._fs.rename(path, trash)
                self._trash.add(trash)
                if self._volume_groups is not None:
                    self._volume_groups.pop(info.id, None)
            self._capacities.pop(volume_id)
        if trash is not None:
            try:
                self._fs.delete_subvolume(trash)
            finally:
                with self._lock:
                    self._trash.discard(trash)
        if group is not None:
            self._drop_group(group)
        self._commit.commit()

    def expand_volume(self, volume_id: str, capacity: int, limit: int | None = None) -> Volume:
        """Raises a volume's limit to at least `capacity` bytes. Volumes never shrink: one that has as
        much already is left as it is, unless that is more than `limit`, which is refused."""
        _check_capacity(capacity)
        with self._lock:
            path = self.volume_path(volume_id)
            volume = self._meta.volume(path)
            if limit is not None and volume.capacity > limit:
                raise CapacityOutOfRange(
                    f"volume {volume_id} has {volume.capacity} bytes, more than the limit {limit}: "
                    "volumes never shrink"
                )
            if capacity > volume.capacity:
                self._check_writable(limits=True)
                self._reserve(volume_id, capacity)
                try:
                    self._fs.set_limit(volume.qgroup, capacity)
                    meta = self._meta.read(path)
                    meta["capacity"] = capacity
                    self._meta.write(path, meta)
                except BaseException:
                    self._capacities.put(volume_id, volume.capacity, volume.qgroup)
                    with contextlib.suppress(BtrfsCoreError):  # back to the limit it has promised
                        self._fs.set_limit(volume.qgroup, volume.capacity)
                    raise
                volume = self._meta.volume(path)
        self._commit.commit()
        return volume

    # snapshots

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        return self._meta.snapshot(self._snapshot_path(snapshot_id))

    def list_snapshot_ids(self) -> list[str]:
        return self._ids(self.snapshots_dir)

    def list_snapshots(self, ids: Iterable[str] | None = None) -> list[Snapshot]:
        return self._list(self.snapshots_dir, self._meta.snapshot, ids)

    def create_snapshot(self, name: str, source_volume_id: str) -> Snapshot:
        """A read-only snapshot of a volume. Idempotent by name; another source is AlreadyExists."""
        snapshot_id = self.snapshot_id(name)
        ids.check_id(source_volume_id, "volume")
        with self._lock:
            existing = self._existing(self.snapshots_dir / snapshot_id, self._meta.snapshot)
            if existing is not None:
                if existing.name != name or existing.source_volume_id != source_volume_id:
                    raise AlreadyExists(
                        f"snapshot {name!r} exists with source volume {existing.source_volume_id}, "
                        f"not {source_volume_id}"
                    )
            else:
                source = self.get_volume(source_volume_id)
                self._check_writable()
                self._after_rescan()
                existing = self._build_snapshot(snapshot_id, name, source)
                # Full qgroups: a snapshot of a subvolume that is a member of a level-1 qgroup marks
                # accounting inconsistent, and the kernel then enforces no limit until a rescan ends.
                self._rescan_if_inconsistent()
        self._commit.commit()
        return existing

    def _build_snapshot(self, snapshot_id: str, name: str, source: Volume) -> Snapshot:
        # Built writable under a hidden name in snapshots/, its metadata written on itself, then made
        # read-only and renamed into place (a read-only subvolume can be renamed within its directory,
        # not moved out of it): a visible snapshot is always whole, and nothing is written on, or
        # charged to, the source, which may be full to its limit or made read-only by its owner.
        origin = self.volumes_dir / source.id
        self._refuse_nested(origin, f"volume {source.id}")
        fields = metadata.snapshot_fields(name, source.id, source.capacity)
        staged = self.snapshots_dir / f".{snapshot_id}.{secrets.token_hex(4)}"
        try:
            self._fs.snapshot(origin, staged, readonly=False)
            self._refuse_nested(origin, f"volume {source.id}")  # one made while the snapshot was taken
            self._clear_limit(self._fs.subvolume_info(staged).id)  # full qgroups copy the source's
            self._meta.write(staged, fields, self._meta.snapshot_xattr)
            self._fs.set_readonly(staged, True)
            self._fs.rename(staged, self.snapshots_dir / snapshot_id)
        except BaseException:
            self._discard(staged)
            raise
        return self._meta.snapshot(self.snapshots_dir / snapshot_id)

    def _refuse_nested(self, path: Path, what: str) -> None:
        """NestedSubvolumes when the subvolume at path holds any: a btrfs snapshot is not recursive,
        so a snapshot or clone of it would silently lack their data."""
        nested = self._fs.nested_subvolumes(path)
        if nested:
            shown = ", ".join(_shortened(relative) for relative in nested[:_NESTED_SHOWN])
            more = f" and {len(nested) - _NESTED_SHOWN} more" if len(nested) > _NESTED_SHOWN else ""
            raise NestedSubvolumes(
                f"{what} holds nested subvolumes, which a snapshot or clone would leave out (a btrfs "
                f"snapshot is not recursive): {shown}{more}; move their data into plain directories"
            )

    def _clear_limit(self, subvolume_id: int) -> None:
        try:
            limited = self._fs.usage(subvolume_id).limit is not None
        except NotFound:
            return  # no qgroup: quotas are off
        if limited:
            self._fs.set_limit(subvolume_id, None)

    def delete_snapshot(self, snapshot_id: str) -> None:
        path = self.snapshots_dir / ids.check_id(snapshot_id, "snapshot")
        with self._lock:
            # One ioctl unlinks it atomically (a snapshot holds no nested subvolumes), and a
            # read-only subvolume could not be renamed out of sight anyway.
            if self._fs.is_subvolume(path):
                self._check_writable()
                self._fs.delete_subvolume(path)
        self._commit.commit()

    # usage and health

    def volume_usage(self, volume_id: str) -> QgroupUsage:
        """A volume's usage and limit: those of the qgroup that carries its limit, which holds
        everything nested in it too. The one way to read a volume's usage (see volumes_usage)."""
        return self._fs.usage(self._meta.qgroup_at(self.volume_path(volume_id)))

    def volumes_usage(self, volumes: Iterable[Volume]) -> dict[str, QgroupUsage]:
        """volume_usage of many volumes in one pass over the quota tree, by volume id (a volume whose
        qgroup is missing, quotas off or gone, is left out)."""
        return self._usage_of({volume.id: self._current_qgroup(volume) for volume in volumes})

    def _usage_of(self, groups: Mapping[str, int]) -> dict[str, QgroupUsage]:
        """The usage of each volume id's qgroup, read in one search (two while some volume has not
        been migrated from its level-0 qgroup yet)."""
        found = self._fs.group_usage_all()
        if any(group < quota.LEVEL1 for group in groups.values()):
            found.update(self._fs.usage_all())
        return {volume_id: found[group] for volume_id, group in groups.items() if group in found}

    def _current_qgroup(self, volume: Volume) -> int:
        """The qgroup of a Volume read before its migration (a caller's cache may hold one): the one
        repair_quotas gave it since, if any."""
        if volume.qgroup >= quota.LEVEL1 or self._volume_groups is None:
            return volume.qgroup
        return self._volume_groups.get(volume.subvolume_id, volume.qgroup)

    def usage_all(self) -> dict[int, QgroupUsage]:
        """Every subvolume's usage and limit in one pass, by subvolume id."""
        return self._fs.usage_all()

    def fs_usage(self) -> FsUsage:
        return self._fs.fs_usage()

    def quota_status(self) -> QuotaStatus:
        return self._fs.quota_status()

    def volume_health(self, volume_id: str) -> VolumeHealth:
        """Abnormal, with the reason, when the volume cannot be trusted to work as promised."""
        path = self.volume_location(volume_id)
        if not self._fs.is_subvolume(path):
            return VolumeHealth(True, f"subvolume volumes/{volume_id} is missing")
        return self._health(volume_id, self._meta.qgroup_at(path), self._pool_health())

    def volumes_health(self, volumes: Sequence[Volume]) -> list[VolumeHealth]:
        """volume_health of many volumes (a page of ListVolumes), the pool itself looked at once."""
        pool = self._pool_health()
        return [self._health(volume.id, self._current_qgroup(volume), pool) for volume in volumes]

    def _pool_health(self) -> VolumeHealth | None:
        fs = self._fs
        return health.pool_health(self.root, fs.read_only(), fs.fs_usage(), fs.quota_status())

    def _health(self, volume_id: str, qgroup: int, pool: VolumeHealth | None) -> VolumeHealth:
        if pool is not None:
            return pool
        try:
            usage = self._fs.usage(qgroup)
        except NotFound:
            return health.missing_qgroup(volume_id)
        return health.usage_health(volume_id, usage)

    def volume_stats(self, volume_id: str) -> tuple[QgroupUsage, VolumeHealth]:
        """A volume's usage and its health, the qgroup read once (NodeGetVolumeStats, polled often)."""
        usage = self.volume_usage(volume_id)
        return usage, self._pool_health() or health.usage_health(volume_id, usage)

    # housekeeping

    def clear_staging(self) -> Debris:
        """Removes whatever a crash left: entries of staging, hidden half-made snapshots.

        An entry that resists is logged and left for the next round: whatever the error, it must not
        stop the driver's start-up or the reconciler.
        """
        removed, left = 0, []
        with self._lock:
            for entry in self._debris():
                try:
                    self._remove(entry)
                except Exception as exc:  # a pod can make debris resist in ways no list foresees
                    log.warning(
                        "debris %s not removed, retried later: %s: %s", entry, type(exc).__name__, exc
                    )
                    left.append(str(entry.relative_to(self.root)))
                    continue
                removed += 1
        if removed:
            self._commit.commit()
        return Debris(removed, left)

    def _debris(self) -> list[Path]:
        """Needs the lock: staging entries but those a delete in progress removes itself, and the
        snapshots that a crash left half-made under their hidden names."""
        staged = [self.staging_dir / name for name in sorted(self._fs.list_dir(self.staging_dir))]
        staged = [entry for entry in staged if entry not in self._trash]
        hidden = [self.snapshots_dir / name for name in sorted(self._fs.list_dir(self.snapshots_dir))]
        hidden = [entry for entry in hidden if entry.name.startswith(".")]
        return staged + [entry for entry in hidden if self._fs.is_subvolume(entry)]

    def _remove(self, entry: Path) -> None:
        if self._fs.is_subvolume(entry):
            self._fs.delete_subvolume(entry)
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()

    def remove_stale_qgroups(self) -> list[int]:
        removed = self._fs.remove_stale_qgroups()
        if removed:
            self._commit.commit()
        return removed

    def rescan_quota(self) -> None:
        """Rescans full qgroup accounting; simple quotas have nothing to rescan."""
        if self._fs.quota_status().mode is QuotaMode.FULL:
            self._fs.rescan_quota()

    def sync(self) -> None:
        self._commit.commit()

    # quotas that come back: each volume's level-1 qgroup, its limit, and what is nested in it

    def _group_of_subvolume(self) -> dict[int, int]:
        """Each volume's subvolume id -> its level-1 qgroup, read on first use and kept up to date by
        create, delete and repair_quotas (needs the lock): the nested-subvolume scan runs every few
        seconds and must not read every volume's metadata each time."""
        if self._volume_groups is None:
            self._volume_groups = {
                volume.subvolume_id: volume.qgroup
                for volume in self.list_volumes()
                if volume.qgroup >= quota.LEVEL1
            }
        return self._volume_groups

    def repair_quotas(self) -> QuotaRepairs:
        """Makes every volume's quota what its metadata says, the capacity there being the truth.

        Per volume: its level-1 qgroup exists (recreated after quotas were turned off and on again),
        carries exactly the capacity as limit (re-applied after `btrfs qgroup limit none`), and its
        subvolume's own qgroup carries none. A volume made before level-1 qgroups is migrated: a new
        qgroup is created, named in the metadata, its subvolume assigned, the limit moved; each step
        is idempotent, so a crash midway is finished by the next pass. Level-1 qgroups of this driver
        that no volume names (a crash between creating one and its volume, or a delete the kernel
        refused with EBUSY) are removed once they have no live member. Nothing happens with quotas off.
        """
        if self._fs.quota_status().mode is QuotaMode.OFF:
            return QuotaRepairs()
        counts = {"migrated": 0, "qgroups_restored": 0, "limits_restored": 0, "orphans_removed": 0}
        with self._lock:
            self._after_rescan()
            groups = self._fs.group_usage_all()
            level0 = self._fs.usage_all()
            named: dict[int, int] = {}
            for volume in self.list_volumes():
                try:
                    self._repair_volume(volume, groups, level0, named, counts)
                except BtrfsCoreError as exc:
                    log.warning("quota of volume %s not repaired: %s", volume.id, exc)
            self._volume_groups = named
            counts["orphans_removed"] = self._remove_orphan_groups(set(groups) - set(named.values()))
        repairs = QuotaRepairs(**counts)
        if repairs != QuotaRepairs():
            self._commit.commit()
            self._rescan_if_inconsistent()
        return repairs

    def _repair_volume(
        self,
        volume: Volume,
        groups: Mapping[int, QgroupUsage],
        level0: Mapping[int, QgroupUsage],
        named: dict[int, int],
        counts: dict[str, int],
    ) -> None:
        group = volume.qgroup
        if group < quota.LEVEL1:
            group = self._new_group()
            path = self.volumes_dir / volume.id
            meta = self._meta.read(path)
            meta["qgroup"] = group
            self._meta.write(path, meta)  # from here on the qgroup is the volume's, not an orphan
            self._fs.assign_qgroup(volume.subvolume_id, group, True)
            if self._ledger is not None:
                self._ledger.put(volume.id, volume.capacity, group)
            log.info("volume %s migrated to its own qgroup %s", volume.id, quota.show(group))
            counts["migrated"] += 1
        elif group not in groups:
            self._fs.create_qgroup(group)
            log.warning("volume %s: its qgroup %s was gone, recreated", volume.id, quota.show(group))
            counts["qgroups_restored"] += 1
        named[volume.subvolume_id] = group
        current = groups.get(group)
        if volume.qgroup < quota.LEVEL1:
            self._fs.set_limit(group, volume.capacity)  # moved, not restored
        elif current is None or current.limit != volume.capacity:
            self._fs.set_limit(group, volume.capacity)
            log.warning(
                "volume %s: limit %s restored to its capacity %d",
                volume.id,
                "none" if current is None or current.limit is None else current.limit,
                volume.capacity,
            )
            counts["limits_restored"] += 1
        own = level0.get(volume.subvolume_id)
        if own is not None and own.limit is not None:
            self._fs.set_limit(volume.subvolume_id, None)  # the old shape's limit, or one set by hand

    def _remove_orphan_groups(self, candidates: Iterable[int]) -> int:
        """Removes the driver's level-1 qgroups among candidates that have no live member."""
        orphans = [g for g in candidates if g >> quota.LEVEL_SHIFT == 1 and g & _GROUP_MARK]
        if not orphans:
            return 0
        live = self._fs.subvolume_parents()
        members: dict[int, list[int]] = {}
        for member, parents in self._fs.qgroup_relations().items():
            for parent in parents:
                members.setdefault(parent, []).append(member)
        removed = 0
        for group in orphans:
            if any(member in live for member in members.get(group, ())):
                continue  # a pod's nested subvolume joined it: reparent_nested moves it first
            try:
                for member in members.get(group, ()):
                    self._fs.assign_qgroup(member, group, False)  # a stale qgroup of a gone subvolume
            except BtrfsCoreError as exc:
                log.info("orphan qgroup %s: %s", quota.show(group), exc)
                continue
            if self._drop_group(group):
                log.info("removed orphan qgroup %s", quota.show(group))
                removed += 1
        return removed

    def reparent_nested(self) -> NestedScan:
        """Puts every subvolume at or below a volume into exactly that volume's level-1 qgroup.

        A pod may create subvolumes in its volume (no capability needed), joining no qgroup (full
        qgroups; or an empty qgroup_inherit list) or a neighbour's (its qgroup_inherit): each such
        one is taken out of the wrong qgroups and assigned to its volume's. Found from the kernel's
        subvolume tree (root back refs) and the quota tree's relation items, two searches, no path
        walking. Under full qgroups an assignment leaves accounting inconsistent: a rescan starts.
        """
        if self._fs.quota_status().mode is QuotaMode.OFF:
            return NestedScan(0, 0)
        with self._lock:
            volume_groups = dict(self._group_of_subvolume())
        relations = self._fs.qgroup_relations()
        holders = self._fs.subvolume_parents()
        wanted: dict[int, int | None] = dict(volume_groups)

        def group_for(subvolume_id: int) -> int | None:
            """The group of the volume at or above a subvolume, walking up its holders once."""
            chain = []
            node: int | None = subvolume_id
            while node is not None and node not in wanted:
                chain.append(node)
                node = holders.get(node)  # None past the top level
            found = wanted[node] if node is not None else None
            for link in chain:
                wanted[link] = found
            return found

        out_of_place = repaired = 0
        for subvolume_id in holders:
            group = group_for(subvolume_id)
            if group is None:
                continue
            parents = {p for p in relations.get(subvolume_id, ()) if p >> quota.LEVEL_SHIFT == 1}
            if parents == {group}:
                continue
            out_of_place += 1
            if out_of_place == 1:
                self._after_rescan()
            try:
                for wrong in parents - {group}:
                    self._fs.assign_qgroup(subvolume_id, wrong, False)
                if group not in parents:
                    self._fs.assign_qgroup(subvolume_id, group, True)
            except BtrfsCoreError as exc:
                log.warning("subvolume %d not moved into qgroup %s: %s", subvolume_id, quota.show(group), exc)
                continue
            log.warning(
                "subvolume %d was in qgroups %s, not its volume's %s: moved",
                subvolume_id,
                ", ".join(quota.show(p) for p in sorted(parents)) or "none",
                quota.show(group),
            )
            repaired += 1
        # Also after a snapshot or clone whose rescan was cancelled by the next change: every few
        # seconds, so full qgroups never stay unenforced for long.
        if repaired:
            self._commit.commit()
        self._rescan_if_inconsistent()
        return NestedScan(out_of_place, repaired)


def _check_capacity(capacity: int) -> None:
    if not MIN_VOLUME_BYTES <= capacity <= MAX_VOLUME_BYTES:
        raise CapacityOutOfRange(
            f"capacity {capacity} is outside {MIN_VOLUME_BYTES}..{MAX_VOLUME_BYTES} bytes"
        )


def _check_range(required: int, limit: int) -> None:
    if required < 0 or limit < 0:
        raise CapacityOutOfRange("capacity_range: required_bytes and limit_bytes must not be negative")
    if limit and limit < required:
        raise CapacityOutOfRange(f"capacity_range: limit_bytes {limit} is below required_bytes {required}")


def _same_volume(
    existing: Volume, name: str, required: int, limit: int, source: Source | None, metadata: dict[str, str]
) -> None:
    """Refuses (AlreadyExists) a request for an existing volume that the volume does not satisfy."""
    if existing.name != name:
        raise AlreadyExists(f"volume id {existing.id} belongs to another name, {existing.name!r}")
    if existing.source != source:
        raise AlreadyExists(f"volume {name!r} exists with source {existing.source}, not {source}")
    if existing.capacity < required or (limit and existing.capacity > limit):
        raise AlreadyExists(
            f"volume {name!r} exists with capacity {existing.capacity}, outside the range asked for "
            f"(required_bytes {required}, limit_bytes {limit or 'none'})"
        )
    if existing.metadata != metadata:
        differ = sorted(
            key
            for key in existing.metadata.keys() | metadata.keys()
            if existing.metadata.get(key) != metadata.get(key)
        )
        raise AlreadyExists(f"volume {name!r} exists with other parameters: {', '.join(differ)} differ")


def _shortened(relative: str) -> str:
    if len(relative) <= _SHOWN_CHARS:
        return relative
    half = _SHOWN_CHARS // 2
    return f"{relative[:half]}...{relative[-half:]}"
