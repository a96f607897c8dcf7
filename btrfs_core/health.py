"""Volume health: whether a volume can be trusted to work as promised, with the reason when not."""

from pathlib import Path

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
