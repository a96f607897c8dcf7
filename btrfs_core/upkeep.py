"""Upkeep of a pool: what puts it back in order after crashes, changes made behind the driver's back
and what the kernel leaves behind. Opening the pool clears staging; the reconciler
(btrfs_core/maintenance.py) runs the rest now and then."""

import logging
from collections.abc import Callable, Iterable

from btrfs_core.capacity import Capacities
from btrfs_core.models import NestedScan, QuotaRepairs, Volume
from btrfs_core.qgroups import VolumeQgroups
from btrfs_core.shared import PoolShared
from btrfs_core.staging import Debris, Staging

log = logging.getLogger(__name__)


class PoolUpkeep:
    """The repairs of one pool (`Pool.upkeep`), each committed before it returns. Shares the pool's
    lock where it touches what creates and deletes touch."""

    def __init__(
        self,
        shared: PoolShared,
        staging: Staging,
        qgroups: VolumeQgroups,
        capacities: Capacities,
        volume_ids: Callable[[], list[str]],
    ) -> None:
        self._lock, self._commit = shared.lock, shared.commit
        self._staging = staging
        self._qgroups = qgroups
        self._capacities = capacities
        self._volume_ids = volume_ids

    def clear_staging(self) -> Debris:
        """Removes whatever a crash left (see Staging.clear)."""
        with self._lock:
            debris = self._staging.clear()
        if debris.removed:
            self._commit.commit()
        return debris

    def release_vanished_volumes(self) -> list[str]:
        """Forgets the capacity of volumes deleted behind the driver's back (a subvolume deleted by
        hand): it is free again. Returns their ids."""
        with self._lock:
            gone = self._capacities.release_vanished(self._volume_ids())
        for volume_id in gone:
            log.warning("volume %s was deleted behind the driver's back: its capacity is released", volume_id)
        return gone

    def stale_qgroups(self) -> list[int]:
        """Level-0 qgroups whose subvolume is gone (see VolumeQgroups.stale), for the count and for
        remove_stale_qgroups: the quota tree read once."""
        return self._qgroups.stale()

    def remove_stale_qgroups(self, stale: Iterable[int]) -> list[int]:
        """Removes those of the stale qgroups the kernel lets go; returns them."""
        removed = self._qgroups.remove_stale(stale)
        if removed:
            self._commit.commit()
        return removed

    def rescan_quota(self) -> None:
        """Rescans full qgroup accounting; simple quotas have nothing to rescan."""
        self._qgroups.rescan()

    def repair_quotas(self) -> QuotaRepairs:
        """Makes every volume's quota what its metadata says (see VolumeQgroups.repair)."""
        return self._qgroups.repair(self._migrated)

    def _migrated(self, volume: Volume, group: int) -> None:
        self._capacities.migrated(volume.id, volume.capacity, group)

    def reparent_nested(self) -> NestedScan:
        """Puts every subvolume at or below a volume into that volume's level-1 qgroup (see
        VolumeQgroups.reparent_nested)."""
        return self._qgroups.reparent_nested()
