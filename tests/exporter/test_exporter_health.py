"""Pool.stats.volume_health on a real pool, each abnormal condition provoked the way it happens in life."""

import errno
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from btrfs_core import filesystem, quota
from btrfs_core.pool import Pool
from tests.exporter.helpers import btrfs, write_file
from tests.exporter.test_exporter_collector import make_inconsistent

MiB = 1 << 20

pytestmark = pytest.mark.kernel


@pytest.fixture
def volume_id(pool: Pool) -> str:
    volume = pool.create_volume("vol", 32 * MiB)
    write_file(pool.volume_path(volume.id) / "f", MiB)
    filesystem.sync(pool.root)
    return volume.id


def test_a_healthy_volume(pool: Pool, volume_id: str) -> None:
    health = pool.stats.volume_health(volume_id)
    assert not health.abnormal, health.message


def test_subvolume_deleted_behind_the_pools_back(pool: Pool, volume_id: str) -> None:
    btrfs("subvolume", "delete", str(pool.volumes_dir / volume_id))
    health = pool.stats.volume_health(volume_id)
    assert health.abnormal
    assert "missing" in health.message


def test_a_volume_written_to_its_limit(pool: Pool) -> None:
    volume = pool.create_volume("full", 8 * MiB)
    written = 0
    with pytest.raises(OSError) as raised, open(pool.volume_path(volume.id) / "f", "wb") as f:
        while written < 16 * MiB:
            written += f.write(b"x" * 65536)
            f.flush()
    assert raised.value.errno == errno.EDQUOT
    filesystem.sync(pool.root)  # the qgroup counters are updated at commit
    health = pool.stats.volume_health(volume.id)
    assert health.abnormal
    assert "full" in health.message


@pytest.fixture
def read_only(btrfs_mount: Path) -> Iterator[None]:
    subprocess.run(["mount", "-o", "remount,ro", str(btrfs_mount)], check=True, timeout=60)
    try:
        yield
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(btrfs_mount)], check=True, timeout=60)


def test_pool_remounted_read_only(pool: Pool, volume_id: str, read_only: None) -> None:
    health = pool.stats.volume_health(volume_id)
    assert health.abnormal
    assert "read-only" in health.message


def test_limit_cleared(pool: Pool, volume_id: str, btrfs_mount: Path) -> None:
    btrfs("qgroup", "limit", "none", quota.show(pool.get_volume(volume_id).qgroup), str(btrfs_mount))
    health = pool.stats.volume_health(volume_id)
    assert health.abnormal
    assert "no qgroup limit" in health.message


def test_quotas_disabled_leaves_no_qgroup(pool: Pool, volume_id: str, btrfs_mount: Path) -> None:
    btrfs("quota", "disable", str(btrfs_mount))
    health = pool.stats.volume_health(volume_id)
    assert health.abnormal
    assert "no qgroup" in health.message


def test_inconsistent_accounting(btrfs_mount: Path) -> None:
    pool = Pool.open(btrfs_mount, quota_mode="full")  # simple quotas do not become inconsistent so
    volume = pool.create_volume("vol", 32 * MiB)
    write_file(pool.volume_path(volume.id) / "f", MiB)
    pool.create_snapshot("snap", volume.id)
    make_inconsistent(btrfs_mount, volume.subvolume_id)
    health = pool.stats.volume_health(volume.id)
    assert health.abnormal
    assert "inconsistent" in health.message
