"""The collector against a real pool: scraped values equal what the kernel reports."""

import os
import subprocess
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from btrfs_core import filesystem, quota
from btrfs_core.backend import KernelBackend
from btrfs_core.maintenance import Reconciler
from btrfs_core.models import (
    Algorithm,
    Compression,
    QgroupUsage,
    Snapshot,
    Source,
    SourceKind,
    TuningRequest,
    Volume,
)
from btrfs_core.pool import Pool
from btrfs_exporter import build_registry
from btrfs_exporter.collector import PoolCollector
from tests.exporter.helpers import btrfs, kernel_qgroups, labels, pvc, samples, write_file
from tests.support import eventually

MiB = 1 << 20
DRIVER = "btrfs.csi.test"


def volume_labels(volume_id: str, namespace: str = "", name: str = "") -> frozenset[tuple[str, str]]:
    return labels(volume_id=volume_id, pvc_namespace=namespace, pvc_name=name)


@pytest.mark.kernel
def test_scraped_usage_equals_the_kernels(pool: Pool, btrfs_mount: Path, quota_mode: str) -> None:
    metrics = build_registry(pool, DRIVER)
    a = pool.create_volume("data-a", 64 * MiB, metadata=pvc("team-a", "data-a"))
    b = pool.create_volume("data-b", 32 * MiB, metadata=pvc("team-b", "data-b"))
    c = pool.create_volume("no-pvc", 16 * MiB)
    write_file(pool.volume_path(a.id) / "one", 5 * MiB)
    write_file(pool.volume_path(b.id) / "two", 3 * MiB + 123)
    snap = pool.create_snapshot("snap-a", a.id)
    write_file(pool.volume_path(a.id) / "after-snapshot", 2 * MiB)
    clone = pool.create_volume("clone", 64 * MiB, source=Source(SourceKind.SNAPSHOT, snap.id))
    quota.wait_rescan(btrfs_mount)  # full qgroups: the rescan the clone started
    filesystem.sync(pool.root)

    scraped = samples(metrics.registry)
    kernel = kernel_qgroups(btrfs_mount)

    referenced = scraped["btrfs_csi_volume_referenced_bytes"]
    exclusive = scraped["btrfs_csi_volume_exclusive_bytes"]
    limit = scraped["btrfs_csi_volume_limit_bytes"]
    expected_labels = {
        a.id: volume_labels(a.id, "team-a", "data-a"),
        b.id: volume_labels(b.id, "team-b", "data-b"),
        c.id: volume_labels(c.id),
        clone.id: volume_labels(clone.id),
    }
    assert set(referenced) == set(exclusive) == set(limit) == set(expected_labels.values())
    for volume in (a, b, c, clone):
        rfer, excl, max_rfer = kernel[volume.qgroup]
        key = expected_labels[volume.id]
        assert referenced[key] == rfer
        assert exclusive[key] == excl
        assert limit[key] == max_rfer == volume.capacity
    # Sanity against what was written (data plus the subvolume's own tree blocks).
    assert 7 * MiB <= referenced[expected_labels[a.id]] < 8 * MiB
    assert 3 * MiB + 123 <= referenced[expected_labels[b.id]] < 4 * MiB

    snap_key = labels(snapshot_id=snap.id, source_volume_id=a.id)
    rfer, excl, _ = kernel[snap.subvolume_id]
    assert scraped["btrfs_csi_snapshot_referenced_bytes"] == {snap_key: rfer}
    assert scraped["btrfs_csi_snapshot_exclusive_bytes"] == {snap_key: excl}
    if quota_mode == "full":
        assert rfer >= 5 * MiB  # the snapshot references the 5 MiB it shares with its source
    else:
        assert rfer < MiB  # simple quotas charge the shared extents to the volume that wrote them

    st = os.statvfs(btrfs_mount)
    assert scraped["btrfs_csi_pool_size_bytes"] == {labels(): st.f_blocks * st.f_frsize}
    assert scraped["btrfs_csi_pool_free_bytes"][labels()] > 0
    assert 0 < scraped["btrfs_csi_pool_used_bytes"][labels()] < st.f_blocks * st.f_frsize
    assert scraped["btrfs_csi_pool_volumes"] == {labels(): 4}
    assert scraped["btrfs_csi_pool_snapshots"] == {labels(): 1}
    other = "simple" if quota_mode == "full" else "full"
    assert scraped["btrfs_csi_pool_quota_mode"] == {labels(mode=quota_mode): 1, labels(mode=other): 0}
    assert scraped["btrfs_csi_pool_qgroups_inconsistent"] == {labels(): 0}
    (build,) = scraped["btrfs_csi_build_info"]
    assert dict(build)["kernel"] == os.uname().release
    assert dict(build)["driver_name"] == DRIVER
    assert dict(build)["version"]
    assert scraped["btrfs_csi_scrape_errors_total"] == {labels(): 0}


@pytest.mark.kernel
def test_counters_lag_until_commit_and_a_sync_shows_them(pool: Pool) -> None:
    metrics = build_registry(pool, DRIVER)
    volume = pool.create_volume("lagging", 64 * MiB)
    key = volume_labels(volume.id)
    before = samples(metrics.registry)["btrfs_csi_volume_referenced_bytes"][key]
    with open(pool.volume_path(volume.id) / "f", "wb") as f:
        f.write(os.urandom(4 * MiB))  # no fsync: sits in the page cache and the running transaction
    filesystem.sync(pool.root)
    after = samples(metrics.registry)["btrfs_csi_volume_referenced_bytes"][key]
    assert after - before >= 4 * MiB


class _NoScanPool:
    """Stands in for a Pool that must not be read: every call fails the test."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __getattr__(self, name: str) -> Any:
        def fail(*args: object, **kwargs: object) -> "_NoScanPool":
            if name.endswith("_index"):  # making an index reads nothing; its refresh would fail here
                return self
            raise AssertionError(f"Pool.{name} was called while registering")

        return fail


def test_registering_does_not_scan(tmp_path: Path) -> None:
    pool = cast(Pool, _NoScanPool(tmp_path))
    first = build_registry(pool, DRIVER)
    second = build_registry(pool, DRIVER)  # registries are independent: no duplicate-name clash
    assert first.registry is not second.registry
    names = {family.name for family in first.collector.describe()}
    assert "btrfs_csi_volume_referenced_bytes" in names
    assert "btrfs_csi_pool_quota_mode" in names


@pytest.mark.kernel
def test_describe_names_what_collect_yields(pool: Pool) -> None:
    collector = PoolCollector(pool, DRIVER)
    pool.create_volume("v", 16 * MiB)
    pool.create_snapshot("s", "v")
    described = [(m.name, m.type) for m in collector.describe()]
    collected = [(m.name, m.type) for m in collector.collect()]
    assert described == collected


class ReadCounter:
    """Counts the objects read through a pool (the collector's index reads each once): set on the
    pool before a collector makes its indexes."""

    def __init__(self, pool: Pool, monkeypatch: pytest.MonkeyPatch) -> None:
        self.volumes = self.snapshots = 0
        get_volume, get_snapshot = pool.get_volume, pool.get_snapshot

        def volume(volume_id: str) -> Volume:
            found = get_volume(volume_id)
            self.volumes += 1
            return found

        def snapshot(snapshot_id: str) -> Snapshot:
            found = get_snapshot(snapshot_id)
            self.snapshots += 1
            return found

        monkeypatch.setattr(pool, "get_volume", volume)
        monkeypatch.setattr(pool, "get_snapshot", snapshot)


@pytest.mark.kernel
def test_index_reads_each_object_once_and_sees_replacements(
    pool: Pool, btrfs_mount: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = ReadCounter(pool, monkeypatch)
    collector = PoolCollector(pool, DRIVER)
    metrics = build_registry(pool, DRIVER)
    for name in ("v1", "v2", "v3"):
        pool.create_volume(name, 16 * MiB, metadata=pvc("ns", name))
    pool.create_snapshot("s1", "v1")
    list(collector.collect())
    list(collector.collect())
    assert (counted.volumes, counted.snapshots) == (3, 1)

    pool.create_volume("v4", 16 * MiB)
    pool.delete_volume("v2")
    list(collector.collect())
    assert counted.volumes == 4

    # Same name, new subvolume, other PVC: the index must not serve the old one.
    pool.delete_volume("v3")
    v3 = pool.create_volume("v3", 32 * MiB, metadata=pvc("other", "v3-again"))
    write_file(pool.volume_path("v3") / "f", 2 * MiB)
    filesystem.sync(pool.root)
    scraped = {
        dict(key)["volume_id"]: (dict(key)["pvc_namespace"], value)
        for key, value in _collected(collector, "btrfs_csi_volume_referenced_bytes").items()
    }
    assert counted.volumes == 5
    assert set(scraped) == {"v1", "v3", "v4"}
    assert scraped["v3"] == ("other", kernel_qgroups(btrfs_mount)[v3.qgroup][0])
    # The same answers as listing through the pool at every scrape.
    unindexed = build_registry(pool, DRIVER, index=False)
    volatile = {"btrfs_csi_scrape_duration_seconds", "btrfs_csi_pool_used_bytes", "btrfs_csi_pool_free_bytes"}

    def stable(registry: CollectorRegistry) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
        return {
            name: values
            for name, values in samples(registry).items()
            if name not in volatile and not name.endswith("_created")
        }

    assert stable(metrics.registry) == stable(unindexed.registry)


@pytest.mark.kernel
def test_volume_info_carries_the_tuning_and_follows_a_modify(
    pool: Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = ReadCounter(pool, monkeypatch)
    collector = PoolCollector(pool, DRIVER)
    zstd = Compression(Algorithm.ZSTD, 3)
    pool.create_volume("plain", 16 * MiB, metadata=pvc("ns", "plain"))
    pool.create_volume("db", 16 * MiB, metadata=pvc("ns", "db"), tuning=TuningRequest(nodatacow=True))
    pool.create_volume("logs", 16 * MiB, tuning=TuningRequest(compression=zstd))

    def info() -> dict[str, tuple[str, str, str]]:
        return {
            key["volume_id"]: (key["compression"], key["nodatacow"], key["pvc_name"])
            for key, value in (
                (dict(k), v) for k, v in _collected(collector, "btrfs_csi_volume_info").items()
            )
            if value == 1
        }

    assert info() == {
        "plain": ("", "false", "plain"),
        "db": ("", "true", "db"),
        "logs": ("zstd:3", "false", ""),
    }
    assert info()["logs"] == ("zstd:3", "false", "")  # the index served it: read once
    assert counted.volumes == 3
    pool.modify_volume("plain", Compression(Algorithm.LZO))
    assert info()["plain"] == ("lzo", "false", "plain")
    assert counted.volumes == 4  # the modified volume read again, not the others


def _collected(collector: PoolCollector, name: str) -> dict[frozenset[tuple[str, str]], float]:
    for family in collector.collect():
        if family.name == name:
            return {frozenset(s.labels.items()): s.value for s in family.samples}
    raise AssertionError(f"{name} not collected")


@pytest.mark.kernel
def test_inconsistent_flag_shows_and_clears_after_the_reconcilers_rescan(btrfs_mount: Path) -> None:
    pool = Pool.open(btrfs_mount, quota_mode="full")
    metrics = build_registry(pool, DRIVER)
    volume = pool.create_volume("shared", 64 * MiB)
    write_file(pool.volume_path(volume.id) / "f", 4 * MiB)
    pool.create_snapshot("snap", volume.id)  # now the volume's extents are shared: excl != rfer
    quota.wait_rescan(btrfs_mount)  # the one the snapshot started (full qgroups): let it end first
    make_inconsistent(btrfs_mount, volume.subvolume_id)
    assert samples(metrics.registry)["btrfs_csi_pool_qgroups_inconsistent"] == {labels(): 1}

    Reconciler(pool, metrics.reconciler_metrics).run_once()
    assert metrics.registry.get_sample_value("btrfs_csi_reconciler_actions_total", {"action": "rescan"}) == 1
    wait_consistent(pool)
    assert samples(metrics.registry)["btrfs_csi_pool_qgroups_inconsistent"] == {labels(): 0}


def make_inconsistent(mount: Path, subvolume_id: int) -> None:
    """Full qgroups: assigning a qgroup with shared extents to a parent without a rescan."""
    btrfs("qgroup", "create", "1/100", str(mount))
    result = subprocess.run(
        ["btrfs", "qgroup", "assign", "--no-rescan", f"0/{subvolume_id}", "1/100", str(mount)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert Pool.open(mount).stats.quota_status().inconsistent


def wait_consistent(pool: Pool) -> None:
    def consistent() -> bool:
        status = pool.stats.quota_status()
        return not status.inconsistent and not status.rescan_running

    eventually(consistent, "qgroups consistent", interval=0.05)


@pytest.mark.kernel
def test_quota_off_leaves_volumes_without_usage(pool: Pool, btrfs_mount: Path) -> None:
    metrics = build_registry(pool, DRIVER)
    pool.create_volume("v", 16 * MiB)
    btrfs("quota", "disable", str(btrfs_mount))
    scraped = samples(metrics.registry)
    assert "btrfs_csi_volume_referenced_bytes" not in scraped
    assert scraped["btrfs_csi_pool_volumes"] == {labels(): 1}
    assert set(scraped["btrfs_csi_pool_quota_mode"].values()) == {0}
    assert scraped["btrfs_csi_scrape_errors_total"] == {labels(): 0}


@pytest.mark.kernel
def test_a_cleared_limit_has_no_limit_sample(pool: Pool, btrfs_mount: Path) -> None:
    metrics = build_registry(pool, DRIVER)
    limited = pool.create_volume("limited", 16 * MiB)
    unlimited = pool.create_volume("unlimited", 16 * MiB)
    btrfs("qgroup", "limit", "none", quota.show(unlimited.qgroup), str(btrfs_mount))
    scraped = samples(metrics.registry)
    assert scraped["btrfs_csi_volume_limit_bytes"] == {volume_labels(limited.id): 16 * MiB}
    assert volume_labels(unlimited.id) in scraped["btrfs_csi_volume_referenced_bytes"]


@pytest.mark.kernel
def test_a_failing_read_is_logged_and_counted_not_raised(
    pool: Pool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = build_registry(pool, DRIVER)
    pool.create_volume("v", 16 * MiB)

    def broken(*_args: object) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pool.stats, "volumes_usage", broken)
    scraped = samples(metrics.registry)
    assert scraped["btrfs_csi_scrape_errors_total"] == {labels(): 1}
    assert "btrfs_csi_build_info" in scraped
    assert "btrfs_csi_volume_referenced_bytes" not in scraped
    assert "Input/output error" in caplog.text
    monkeypatch.undo()
    assert volume_labels("v") in samples(metrics.registry)["btrfs_csi_volume_referenced_bytes"]


class LevelZeroReads(KernelBackend):
    """The kernel backend, recording the ranges of level-0 qgroups read."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.ranges: list[tuple[int, int]] = []

    def usage_all(self, first: int = 0, last: int = quota.LEVEL1 - 1) -> dict[int, QgroupUsage]:
        self.ranges.append((first, last))
        return super().usage_all(first, last)


@pytest.mark.kernel
def test_a_scrape_reads_level_zero_qgroups_only_for_snapshots(btrfs_mount: Path) -> None:
    """The volumes' usage is on their level-1 qgroups: without snapshots a scrape reads no level-0
    qgroup (10,000 of them at 10,000 volumes), with snapshots only the range of their ids."""
    backend = LevelZeroReads(btrfs_mount)
    pool = Pool.open(btrfs_mount, backend=backend)
    metrics = build_registry(pool, DRIVER)
    for name in ("v1", "v2", "v3"):
        pool.create_volume(name, 16 * MiB)
    write_file(pool.volume_path("v2") / "data", MiB)
    backend.ranges.clear()
    scraped = samples(metrics.registry)
    assert backend.ranges == [] and len(scraped["btrfs_csi_volume_referenced_bytes"]) == 3
    snapshot = pool.create_snapshot("s", "v2")
    filesystem.sync(pool.root)
    scraped = samples(metrics.registry)
    assert backend.ranges == [(snapshot.subvolume_id, snapshot.subvolume_id)]
    referenced = kernel_qgroups(btrfs_mount)[snapshot.subvolume_id][0]
    assert scraped["btrfs_csi_snapshot_referenced_bytes"] == {
        labels(snapshot_id="s", source_volume_id="v2"): referenced
    }


@pytest.mark.kernel
def test_fast_rendering_exposes_what_prometheus_client_would(pool: Pool) -> None:
    metrics = build_registry(pool, DRIVER)
    pool.create_volume("v1", 16 * MiB, metadata=pvc("ns", 'quote" back\\slash\nnewline ünïcode'))
    pool.create_volume("v2", 16 * MiB, metadata=pvc("ns", "same-labels-elsewhere"))
    pool.create_snapshot("s1", "v1")
    quota.wait_rescan(pool.root)  # full qgroups: the snapshot's rescan, so both scrapes see one state
    filesystem.sync(pool.root)
    metrics.rpc.duration.labels("CreateVolume", "OK").observe(0.5)

    def comparable(library: bool) -> dict[str, dict[frozenset[tuple[str, str]], float]]:
        volatile = (
            "btrfs_csi_scrape_duration_seconds",
            "btrfs_csi_pool_used_bytes",
            "btrfs_csi_pool_free_bytes",
        )
        return {
            name: values
            for name, values in samples(metrics.registry, library).items()
            if name not in volatile and not name.endswith("_created")
        }

    assert comparable(library=False) == comparable(library=True)
    assert len(comparable(library=False)["btrfs_csi_volume_limit_bytes"]) == 2
