"""How a volume is built: its capacity reserved, its level-1 qgroup made, the subvolume born in it (empty,
or a writable snapshot of its origin), its tuning, metadata and limit set, all in staging, then renamed
into place. A failure undoes all of it. Local creates and receives (btrfs_core/transfer.py) build alike."""

from collections.abc import Callable
from pathlib import Path

from btrfs_core import metadata
from btrfs_core.capacity import Capacities
from btrfs_core.errors import BtrfsCoreError, InUse
from btrfs_core.health import HealthCheck
from btrfs_core.models import Source, SourceKind, Tuning, Volume
from btrfs_core.qgroups import VolumeQgroups
from btrfs_core.shared import PoolShared
from btrfs_core.snapshots import refuse_nested
from btrfs_core.staging import Staging


class VolumeBuilder:
    """Builds the volumes of one pool; shares the pool's lock for the ledger and staging's sets only."""

    def __init__(
        self,
        shared: PoolShared,
        staging: Staging,
        capacities: Capacities,
        qgroups: VolumeQgroups,
        health: HealthCheck,
        origin: Callable[[Source | None, int], Path | None],
    ) -> None:
        self._volumes_dir = shared.root / "volumes"
        self._fs, self._meta, self._lock = shared.fs, shared.meta, shared.lock
        self._staging = staging
        self._capacities = capacities
        self._qgroups = qgroups
        self._health = health
        self._origin = origin  # Sources.path: the subvolume a volume made from a source starts as

    def build(
        self,
        volume_id: str,
        name: str,
        capacity: int,
        source: Source | None,
        meta: dict[str, str],
        tuned: Tuning,
        base: Tuning,
        received: Path | None = None,
        into: Path | None = None,
    ) -> Volume:
        """received: the origin, a subvolume a receive made, its capacity reserved; into: not volumes/."""
        origin = received or self._origin(source, capacity)
        into = into or self._volumes_dir / volume_id
        staged = self._staging.path(volume_id)
        with self._lock:
            if received is None:
                if volume_id in self._capacities.arriving:  # its staging path, its promise
                    raise InUse(f"volume {volume_id} is being received: claim or abandon it first")
                self._capacities.reserve(volume_id, capacity)
            self._staging.busy.add(staged)  # not debris for a clean-up meanwhile
        group = None
        try:
            if origin is not None:
                self._qgroups.after_rescan()
            # The level-1 qgroup first, the subvolume born inside it: a crash in between leaves an
            # empty qgroup that no volume names, which repair_quotas removes.
            try:
                group = self._qgroups.new_group()
            except BtrfsCoreError:
                # Read-only pool or quotas turned off: refused with the reason. Looked at only when the
                # first change fails, not before every create (a statfs and a quota-tree search).
                self._health.check_writable(limits=True)
                raise
            if origin is None:
                self._fs.create_subvolume(staged, group)
            else:
                self._fs.snapshot(origin, staged, readonly=False, qgroup=group)
                if source and source.kind is SourceKind.VOLUME:  # one a pod nested meanwhile
                    refuse_nested(self._fs, origin, f"volume {source.id}")
            if tuned != base:  # a new subvolume has none; a snapshot carries its source's
                self._fs.apply_tuning(staged, tuned)
            fields = metadata.volume_fields(name, capacity, group, source, meta, tuned)
            self._meta.write(staged, fields)
            if source and source.kind is SourceKind.SNAPSHOT:
                self._meta.forget_snapshot(staged)  # copied from the snapshot
            # The limit on the level-1 qgroup only: a read-only snapshot of the volume inherits
            # nothing from its 0/N.
            self._fs.set_limit(group, capacity)
            self._fs.rename(staged, into)
        except BaseException:
            with self._lock:
                self._capacities.pop(volume_id)
            self._staging.discard(staged)
            if group is not None:
                self._qgroups.drop_group(group)
            raise
        finally:
            with self._lock:
                self._staging.busy.discard(staged)
        # The answer from what was written: the subvolume's id and creation time are all to read.
        volume = metadata.as_volume(volume_id, fields, self._fs.subvolume_info(into))
        with self._lock:
            self._capacities.put(volume_id, capacity, group)
            self._qgroups.joined(volume.subvolume_id, group)
        if origin is not None:
            # Full qgroups: a snapshot joining a new qgroup leaves its counters inconsistent.
            self._qgroups.rescan_if_inconsistent()
        return volume
