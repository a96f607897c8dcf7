"""What a pool holds and how it is doing, read only: the usage of volumes, snapshots and the filesystem,
the quota status, and volume health (what GetCapacity, NodeGetVolumeStats, ListVolumes' conditions and
the exporter read)."""

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from btrfs_core.backend import Backend
from btrfs_core.errors import NotFound
from btrfs_core.health import HealthCheck
from btrfs_core.metadata import MetadataStore
from btrfs_core.models import FsUsage, QgroupUsage, QuotaStatus, Snapshot, Volume, VolumeHealth
from btrfs_core.qgroups import VolumeQgroups


class PoolStats:
    """The read side of one pool (`Pool.stats`). Takes no lock: every answer is one read of the kernel."""

    def __init__(
        self,
        backend: Backend,
        meta: MetadataStore,
        qgroups: VolumeQgroups,
        health: HealthCheck,
        volume_path: Callable[[str], Path],
    ) -> None:
        self._fs = backend
        self._meta = meta
        self._qgroups = qgroups
        self._health = health
        self._path = volume_path  # NotFound when the volume does not exist

    def read_only(self) -> bool:
        """The pool is mounted read-only: neither the driver nor any pod can write to it."""
        return self._fs.read_only()

    def fs_usage(self) -> FsUsage:
        return self._fs.fs_usage()

    def quota_status(self) -> QuotaStatus:
        return self._fs.quota_status()

    def usage_all(self) -> dict[int, QgroupUsage]:
        """Every subvolume's usage and limit in one pass, by subvolume id."""
        return self._fs.usage_all()

    def snapshots_usage(self, snapshots: Iterable[Snapshot]) -> dict[int, QgroupUsage]:
        """The snapshots' usage, by subvolume id, in one pass over the quota tree that covers only their
        ids: none at all without snapshots (at 10,000 volumes, reading every level-0 qgroup for nothing
        was a fifth of a scrape)."""
        ids = [snapshot.subvolume_id for snapshot in snapshots]
        return self._fs.usage_all(min(ids), max(ids)) if ids else {}

    def volume_usage(self, volume_id: str) -> QgroupUsage:
        """A volume's usage and limit: those of the qgroup that carries its limit, which holds
        everything nested in it too. The one way to read a volume's usage (see volumes_usage)."""
        return self._fs.usage(self._meta.qgroup_at(self._path(volume_id)))

    def volumes_usage(self, volumes: Iterable[Volume]) -> dict[str, QgroupUsage]:
        """volume_usage of many volumes in one pass over the quota tree, by volume id (a volume whose
        qgroup is missing, quotas off or gone, is left out)."""
        return self._qgroups.usage_of({volume.id: self._qgroups.current(volume) for volume in volumes})

    def volume_health(self, volume_id: str) -> VolumeHealth:
        """Abnormal, with the reason, when the volume cannot be trusted to work as promised."""
        try:
            path = self._path(volume_id)
        except NotFound:
            return VolumeHealth(True, f"subvolume volumes/{volume_id} is missing")
        return self._health.volume(volume_id, self._meta.qgroup_at(path))

    def volumes_health(self, volumes: Sequence[Volume]) -> list[VolumeHealth]:
        """volume_health of many volumes (a page of ListVolumes), the pool itself looked at once."""
        return self._health.volumes([(volume.id, self._qgroups.current(volume)) for volume in volumes])

    def volume_stats(self, volume_id: str) -> tuple[QgroupUsage, VolumeHealth]:
        """A volume's usage and its health, the qgroup read once (NodeGetVolumeStats, polled often)."""
        usage = self.volume_usage(volume_id)
        return usage, self._health.of_usage(volume_id, usage)
