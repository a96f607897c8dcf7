"""The pool: volumes and snapshots as subvolumes of one mounted btrfs, the filesystem being the state.

Layout: <root>/volumes/<id>, <root>/snapshots/<id>, <root>/.staging/. Every object is built in
.staging and renamed into place, so a visible object is always complete; a crash leaves staging
debris that opening the pool removes. Every mutating call commits the transaction before it returns.
"""

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from btrfs_core import filesystem, ids, metadata
from btrfs_core.backend import Backend, KernelBackend
from btrfs_core.builder import VolumeBuilder
from btrfs_core.capacity import MIN_VOLUME_BYTES as MIN_VOLUME_BYTES
from btrfs_core.capacity import Capacities, capacity_for, check_capacity, existing_volume
from btrfs_core.claims import Claims
from btrfs_core.commit import GroupCommit
from btrfs_core.errors import BtrfsCoreError, CapacityOutOfRange, InUse, InvalidArgument, NotFound
from btrfs_core.health import HealthCheck
from btrfs_core.index import DirectoryIndex, IndexSet
from btrfs_core.models import (
    NO_TUNING,
    QUOTA_MODE_SETTINGS,
    Compression,
    Snapshot,
    Source,
    TuningRequest,
    Volume,
)
from btrfs_core.qgroups import VolumeQgroups
from btrfs_core.shared import PoolShared
from btrfs_core.snapshots import Snapshots
from btrfs_core.sources import Sources
from btrfs_core.staging import Staging
from btrfs_core.stats import PoolStats
from btrfs_core.transfer import Transfers
from btrfs_core.tuning import VolumeTuning, resolve_tuning
from btrfs_core.upkeep import PoolUpkeep

T = TypeVar("T")
D = TypeVar("D")


class Pool:
    def __init__(self, root: Path, backend: Backend, overprovision: float = 1.0) -> None:
        self.root = root
        self.volumes_dir = root / "volumes"
        self.snapshots_dir = root / "snapshots"
        self._staging = Staging(root, backend)
        self.staging_dir = self._staging.dir
        self.overprovision = overprovision
        self._fs = backend
        self._lock = threading.RLock()  # guards existence checks, capacity accounting and renames
        self._claims = Claims(self._lock)  # IDs a create or delete works on outside the lock
        self._commit = GroupCommit(backend.generation, backend.sync)
        self._meta = metadata.MetadataStore(backend)
        self._exclusive_fd: int | None = None
        shared = PoolShared(root, backend, self._meta, self._lock, self._commit)
        self._qgroups = VolumeQgroups(shared, self.list_volumes)
        self._health = HealthCheck(root, backend)
        self._snapshots = Snapshots(
            shared, self._qgroups, self._staging, self._health.check_writable, self.get_volume
        )
        self._volume_indexes = IndexSet()  # those volume_index made, told of each volume changed in place
        self._sources = Sources(backend, self._meta, self._snapshots.path, self.volume_path)
        self._tuning = VolumeTuning(
            shared, self.volume_path, self._health.check_writable, self._volume_indexes.forget
        )
        self.stats = PoolStats(backend, self._meta, self._qgroups, self._health, self.volume_path)
        self._capacities = Capacities(
            backend,
            self._meta,
            overprovision,
            lambda: [self.volumes_dir / entry for entry in self._ids(self.volumes_dir)],
        )
        self._builder = VolumeBuilder(
            shared, self._staging, self._capacities, self._qgroups, self._health, self._sources.path
        )
        self.transfers = Transfers(
            shared,
            self._qgroups,
            self._staging,
            self._capacities,
            self._snapshots,
            self._health,
            self._builder,
        )
        self.upkeep = PoolUpkeep(
            shared,
            self._staging,
            self._qgroups,
            self._capacities,
            lambda: self.list_volume_ids() + self._claims.held(),  # those being built count as there
        )

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
        if quota_mode not in QUOTA_MODE_SETTINGS:
            raise InvalidArgument(f"quota mode {quota_mode!r} is not one of {', '.join(QUOTA_MODE_SETTINGS)}")
        if not overprovision >= 1.0:
            raise InvalidArgument(f"overprovision ratio {overprovision} is below 1.0")
        pool = cls(path, fs, overprovision)
        if exclusive:
            pool._exclusive_fd = filesystem.lock_exclusively(path)
        try:
            for directory in (pool.volumes_dir, pool.snapshots_dir, pool.staging_dir):
                fs.make_directory(directory)
            pool._qgroups.ensure_quota(quota_mode)
            pool.upkeep.clear_staging()
        except BaseException:
            pool.close()
            raise
        return pool

    def close(self) -> None:
        """Releases the exclusive lock, if this pool holds it."""
        if self._exclusive_fd is not None:
            os.close(self._exclusive_fd)
            self._exclusive_fd = None

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

    # volumes

    def get_volume(self, volume_id: str) -> Volume:
        return self._meta.volume(self.volume_path(volume_id))

    def list_volume_ids(self) -> list[str]:
        """The IDs in volumes/, sorted: cheap to page through before reading any volume."""
        return self._ids(self.volumes_dir)

    def list_volumes(self, ids: Iterable[str] | None = None) -> list[Volume]:
        """Every volume, or those of `ids` that exist (in that order)."""
        return self._list(self.volumes_dir, self._meta.volume, ids)

    def volume_index(self, derive: Callable[[Volume], D]) -> DirectoryIndex[Volume, D]:
        """The volumes, each read once for many listings (see DirectoryIndex), with what `derive`
        makes of each. A volume whose tuning changes (modify_volume) is read again at its next refresh."""
        return self._volume_indexes.add(DirectoryIndex(self._fs, self.volumes_dir, self.get_volume, derive))

    def create_volume(
        self,
        name: str,
        required: int = 0,
        source: Source | None = None,
        metadata: Mapping[str, str] | None = None,
        limit: int = 0,
        tuning: TuningRequest | None = None,
    ) -> Volume:
        """A new volume, empty or an instant writable snapshot of `source`, of at least `required` and
        at most `limit` bytes (0: no bound): the CSI capacity range, decided here (`capacity.capacity_for`).
        `tuning`: what was asked; the rest is none for a new volume, the source's for a clone or restore.

        Idempotent: an existing volume of this name, source, metadata and tuning whose capacity lies in
        the range is the answer; any other volume under the same name raises AlreadyExists.
        """
        volume_id = self.volume_id(name)
        wanted = dict(metadata or {})
        asked = tuning or TuningRequest()
        path = self.volumes_dir / volume_id
        # An empty volume is built outside the pool's lock (it guards only the ledger and staging's
        # sets); one from a source inside it: under full qgroups no snapshot may join a rescan.
        with self._claims.claimed(volume_id), self._lock if source else contextlib.nullcontext():
            existing = existing_volume(self._meta, path, name, required, limit, source, wanted, asked)
            if existing is None:
                size, base = self._sources.size_and_tuning(source) if source is not None else (0, NO_TUNING)
                capacity = capacity_for(required, limit, source, size)
                tuned = resolve_tuning(asked, base, f"{source.kind.value} {source.id}" if source else name)
                existing = self._builder.build(volume_id, name, capacity, source, wanted, tuned, base)
        self._commit.commit()
        return existing

    def available_capacity(self) -> int:
        """The largest volume that can be created now (what GetCapacity reports): 0 on a read-only
        pool, which can take no volume and no write."""
        if self._fs.read_only():
            return 0
        with self._lock:
            return self._capacities.available()

    def delete_volume(self, volume_id: str) -> None:
        """Deletes a volume and anything nested in it; its snapshots live on. Absent is fine.

        A volume bind-mounted somewhere (published) is refused with InUse: btrfs itself would delete
        it under the workload using it.
        """
        path = self.volume_location(volume_id)
        group = None
        with self._claims.claimed(volume_id), self._lock:
            trash = None
            if self._fs.is_subvolume(path):
                published = self._fs.published_targets(path)
                if published:
                    raise InUse(f"volume {volume_id} is still published at {published[0]}")
                self._health.check_writable()
                with contextlib.suppress(NotFound):  # not ours; a failure to read is raised
                    group = metadata.group_of(self._meta.read(path))
                info = self._fs.subvolume_info(path)
                if info.readonly:
                    # Made read-only from inside (its owner may): it could not leave volumes/ (EROFS).
                    self._fs.set_readonly(path, False)
                # Out of sight first: a crash mid-delete leaves staging debris, never half a volume.
                trash = self._staging.path(volume_id)
                self._fs.rename(path, trash)
                self._staging.trash.add(trash)
                self._qgroups.left(info.id)
            elif volume_id in self._capacities.arriving:  # its promise is the receive's to release
                raise InUse(f"volume {volume_id} is being received: abandon it first")
            self._capacities.pop(volume_id)
        if trash is not None:
            try:
                self._fs.delete_subvolume(trash)
            finally:
                with self._lock:
                    self._staging.trash.discard(trash)
        if group is not None:
            self._qgroups.drop_group(group)
        self._commit.commit()

    def expand_volume(self, volume_id: str, capacity: int, limit: int | None = None) -> Volume:
        """Raises a volume's limit to at least `capacity` bytes. Volumes never shrink: one that has as
        much already is left as it is, unless that is more than `limit`, which is refused."""
        check_capacity(capacity)
        with self._lock:
            path = self.volume_path(volume_id)
            volume = self._meta.volume(path)
            if limit is not None and volume.capacity > limit:
                raise CapacityOutOfRange(
                    f"volume {volume_id} has {volume.capacity} bytes, more than the limit {limit}: "
                    "volumes never shrink"
                )
            if capacity > volume.capacity:
                self._health.check_writable(limits=True)
                self._capacities.reserve(volume_id, capacity)
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

    def modify_volume(self, volume_id: str, compression: Compression | None) -> Volume:
        """Sets the compression of a volume, published or not (see VolumeTuning.modify); None
        changes nothing (NotFound all the same for a volume that does not exist)."""
        return self._tuning.modify(volume_id, compression)

    # snapshots

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        return self._meta.snapshot(self._snapshots.path(snapshot_id))

    def list_snapshot_ids(self) -> list[str]:
        return self._ids(self.snapshots_dir)

    def list_snapshots(self, ids: Iterable[str] | None = None) -> list[Snapshot]:
        return self._list(self.snapshots_dir, self._meta.snapshot, ids)

    def snapshot_index(self, derive: Callable[[Snapshot], D]) -> DirectoryIndex[Snapshot, D]:
        return DirectoryIndex(self._fs, self.snapshots_dir, self.get_snapshot, derive)

    def create_snapshot(self, name: str, source_volume_id: str) -> Snapshot:
        """A read-only snapshot of a volume. Idempotent by name; another source is AlreadyExists."""
        return self._snapshots.create(name, source_volume_id)

    def delete_snapshot(self, snapshot_id: str) -> None:
        self._snapshots.delete(snapshot_id)
