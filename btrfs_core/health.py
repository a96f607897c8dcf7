"""Volume health: whether a volume can be trusted to work as promised, with the reason when not."""

import errno
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from btrfs_core.errors import NotFound, QuotaDisabled, ReadOnly
from btrfs_core.models import FsUsage, QgroupUsage, QuotaMode, QuotaStatus, VolumeHealth

# Below this many free bytes under its limit a volume counts as full: writes are about to get EDQUOT.
FULL_MARGIN_BYTES = 128 << 10


def pool_health(root: Path, read_only: bool, fs: FsUsage, status: QuotaStatus) -> VolumeHealth | None:
    """What is wrong with the whole pool, if anything: every volume suffers from it."""
    if read_only:
        return VolumeHealth(True, f"pool {root} is mounted read-only")
    if fs.free < FULL_MARGIN_BYTES:
        return VolumeHealth(True, f"pool {root} has no free space left: writes fail with ENOSPC")
    if status.mode is QuotaMode.OFF:
        return VolumeHealth(True, f"quotas are off on pool {root}: no qgroup enforces any volume's capacity")
    if status.inconsistent:
        return VolumeHealth(
            True, "qgroup accounting is inconsistent: limits are not enforced until a rescan ends"
        )
    return None


def missing_qgroup(volume_id: str) -> VolumeHealth:
    return VolumeHealth(True, f"volume {volume_id} has no qgroup: its capacity is not enforced")


def usage_health(volume_id: str, usage: QgroupUsage) -> VolumeHealth:
    if usage.limit is None:
        return VolumeHealth(True, f"volume {volume_id} has no qgroup limit: its capacity is not enforced")
    if usage.referenced + FULL_MARGIN_BYTES >= usage.limit:
        return VolumeHealth(
            True, f"volume {volume_id} is full: {usage.referenced} of {usage.limit} bytes used"
        )
    return VolumeHealth(False, "volume is healthy")


class HealthBackend(Protocol):
    def read_only(self) -> bool: ...
    def fs_usage(self) -> FsUsage: ...
    def quota_status(self) -> QuotaStatus: ...
    def usage(self, qgroupid: int) -> QgroupUsage: ...


class HealthCheck:
    """The health of a pool's volumes, each judged by the qgroup that carries its limit."""

    def __init__(self, root: Path, backend: HealthBackend) -> None:
        self._root = root
        self._fs = backend

    def pool(self) -> VolumeHealth | None:
        fs = self._fs
        return pool_health(self._root, fs.read_only(), fs.fs_usage(), fs.quota_status())

    def volume(self, volume_id: str, qgroup: int) -> VolumeHealth:
        return self._of_qgroup(volume_id, qgroup, self.pool())

    def volumes(self, qgroups: Sequence[tuple[str, int]]) -> list[VolumeHealth]:
        """Many volumes' health (volume id, qgroup), the pool itself looked at once."""
        pool = self.pool()
        return [self._of_qgroup(volume_id, qgroup, pool) for volume_id, qgroup in qgroups]

    def of_usage(self, volume_id: str, usage: QgroupUsage) -> VolumeHealth:
        """The health of a volume whose usage the caller has read already."""
        return self.pool() or usage_health(volume_id, usage)

    def _of_qgroup(self, volume_id: str, qgroup: int, pool: VolumeHealth | None) -> VolumeHealth:
        if pool is not None:
            return pool
        try:
            usage = self._fs.usage(qgroup)
        except NotFound:
            return missing_qgroup(volume_id)
        return usage_health(volume_id, usage)

    def check_writable(self, limits: bool = False) -> None:
        """Refuses, with the reason, a change the pool cannot make now: it is mounted read-only
        (ReadOnly), or, for a change that sets a limit, its quotas were turned off (QuotaDisabled)."""
        if self._fs.read_only():
            raise ReadOnly(
                f"pool {self._root}", errno.EROFS, "mounted read-only: volumes and snapshots cannot change"
            )
        if limits and self._fs.quota_status().mode is QuotaMode.OFF:
            raise QuotaDisabled(
                f"quotas are off on pool {self._root} (disabled behind the driver's back): no capacity can "
                "be enforced until they are on again (restarting the driver turns them on)"
            )
