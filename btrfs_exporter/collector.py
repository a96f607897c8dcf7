"""A Prometheus collector over a btrfs-csi pool, read at scrape time in one pass.

Every scrape makes two searches of the quota tree (`Pool.stats.snapshots_usage` for the snapshots' level-0
qgroups, over their ids only and none without snapshots; `Pool.stats.volumes_usage` for the volumes' level-1
ones, which carry their limits and hold what is nested in them), one statfs and one quota-status search.
Subvolume ids are mapped to volume and snapshot ids, and volumes to their PVC, through the pool's
directories. There is no polling thread: a scrape sees what the kernel knows at that moment.
`btrfs_csi_volume_info` (always 1) carries each volume's tuning as labels, to join with the byte
families on volume_id.

Listing the pool reads every object's metadata (an xattr and a subvolume-info ioctl each): measured
here, 45 ms at 1,000 volumes and 0.6 s at 10,000, ten times the quota-tree search. So the collector
keeps the pool's indexes (`Pool.volume_index`, btrfs_core/index.py): one directory scan per scrape,
and only objects not seen before are read. What the index keeps (subvolume id, PVC name and
namespace, a snapshot's source, the rendered labels) never changes during an object's life, but for a
volume's tuning, which ControllerModifyVolume changes: the pool then has its indexes read that one
volume again at the next scrape. Usage and limits always come fresh from the quota tree.

The per-volume families are written by `exposition.render`, not prometheus_client's generate_latest,
which costs ~5 µs a sample (see bench/bench_scrape.py for the numbers).
"""

import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from btrfs_core.index import DirectoryIndex
from btrfs_core.models import PVC_NAME_KEY, PVC_NAMESPACE_KEY, QgroupUsage, QuotaMode, Snapshot, Volume
from btrfs_core.pool import Pool
from btrfs_core.version import driver_version
from btrfs_exporter.exposition import GaugeRows, LabelSet

log = logging.getLogger(__name__)

LAG_NOTE = (
    " Read from the btrfs quota tree at scrape time; btrfs updates qgroup counters when a transaction"
    " commits, so they lag writes by up to the commit interval (30 s by default)."
)

VOLUME_LABELS = ("pvc_name", "pvc_namespace", "volume_id")  # sorted, as the text format writes them
VOLUME_INFO_LABELS = ("compression", "nodatacow", *VOLUME_LABELS)
SNAPSHOT_LABELS = ("snapshot_id", "source_volume_id")
BUILD_LABELS = ("version", "driver_name", "kernel")


def volume_labels(volume: Volume) -> LabelSet:
    metadata = volume.metadata
    return LabelSet(
        VOLUME_LABELS, (metadata.get(PVC_NAME_KEY, ""), metadata.get(PVC_NAMESPACE_KEY, ""), volume.id)
    )


def volume_info_labels(volume: Volume, labels: LabelSet) -> LabelSet:
    """The volume's labels and its tuning: compression "" when none is set (the pool's mount options
    decide), nodatacow "true" or "false"."""
    tuning = volume.tuning
    compression = str(tuning.compression) if tuning.compression else ""
    return LabelSet(VOLUME_INFO_LABELS, (compression, str(tuning.nodatacow).lower(), *labels.values))


def volume_label_sets(volume: Volume) -> tuple[LabelSet, LabelSet]:
    """The labels of a volume's byte families and of its info series: made once per read of the
    volume (the index reads a volume again when its tuning changes)."""
    labels = volume_labels(volume)
    return labels, volume_info_labels(volume, labels)


def snapshot_labels(snapshot: Snapshot) -> LabelSet:
    return LabelSet(SNAPSHOT_LABELS, (snapshot.id, snapshot.source_volume_id))


class PoolCollector(Collector):
    """Collects pool, volume and snapshot metrics from one Pool at each scrape.

    `index=False` lists the pool through `Pool.list_volumes()` and `Pool.list_snapshots()` at every
    scrape instead of keeping the directory index (slower from a few hundred volumes on).
    """

    def __init__(self, pool: Pool, driver_name: str, index: bool = True) -> None:
        self._pool = pool
        self._build_labels = (driver_version(), driver_name, os.uname().release)
        self._lock = threading.Lock()  # scrapes may run concurrently; the indexes are not thread-safe
        self._volumes: DirectoryIndex[Volume, tuple[LabelSet, LabelSet]] | None = None
        self._snapshots: DirectoryIndex[Snapshot, LabelSet] | None = None
        if index:
            self._volumes = pool.volume_index(volume_label_sets)
            self._snapshots = pool.snapshot_index(snapshot_labels)
        self._errors = 0
        self._last_duration = 0.0

    # The metric families, empty: describe() returns them so that registering does not scan.

    @staticmethod
    def _families() -> "_Families":
        volume = (VOLUME_LABELS,)
        snapshot = (SNAPSHOT_LABELS,)
        return _Families(
            volume_referenced=GaugeRows(
                "btrfs_csi_volume_referenced_bytes",
                "Bytes a volume references (shared with snapshots or not), from its qgroup." + LAG_NOTE,
                *volume,
            ),
            volume_exclusive=GaugeRows(
                "btrfs_csi_volume_exclusive_bytes",
                "Bytes only this volume references (under simple quotas: bytes charged to it)." + LAG_NOTE,
                *volume,
            ),
            volume_info=GaugeRows(
                "btrfs_csi_volume_info",
                "Always 1: a volume's tuning, compression (empty when none is set: the pool's mount"
                " options decide) and nodatacow, as labels.",
                VOLUME_INFO_LABELS,
            ),
            volume_limit=GaugeRows(
                "btrfs_csi_volume_limit_bytes",
                "The qgroup limit on a volume's referenced bytes, its capacity; absent when the volume"
                " has no limit (then its capacity is not enforced).",
                *volume,
            ),
            snapshot_referenced=GaugeRows(
                "btrfs_csi_snapshot_referenced_bytes",
                "Bytes a snapshot references, from its qgroup." + LAG_NOTE,
                *snapshot,
            ),
            snapshot_exclusive=GaugeRows(
                "btrfs_csi_snapshot_exclusive_bytes",
                "Bytes only this snapshot references (what deleting it frees; under simple quotas:"
                " bytes charged to it)." + LAG_NOTE,
                *snapshot,
            ),
            pool_size=GaugeMetricFamily(
                "btrfs_csi_pool_size_bytes", "Size of the pool's filesystem (statfs)."
            ),
            pool_used=GaugeMetricFamily(
                "btrfs_csi_pool_used_bytes", "Used bytes of the pool's filesystem (statfs)."
            ),
            pool_free=GaugeMetricFamily(
                "btrfs_csi_pool_free_bytes",
                "Bytes of the pool's filesystem still available to new data (statfs f_bavail).",
            ),
            pool_volumes=GaugeMetricFamily("btrfs_csi_pool_volumes", "Volumes in the pool."),
            pool_snapshots=GaugeMetricFamily("btrfs_csi_pool_snapshots", "Snapshots in the pool."),
            quota_mode=GaugeMetricFamily(
                "btrfs_csi_pool_quota_mode",
                "1 for the pool's active quota mode (full qgroups or simple quotas), 0 for the other;"
                " both 0 when quotas are off.",
                labels=("mode",),
            ),
            read_only=GaugeMetricFamily(
                "btrfs_csi_pool_read_only",
                "1 while the pool is mounted read-only (btrfs does so itself after some errors): no"
                " volume can be created, written or published read-write; capacity is reported as 0.",
            ),
            inconsistent=GaugeMetricFamily(
                "btrfs_csi_pool_qgroups_inconsistent",
                "1 while btrfs marks qgroup accounting inconsistent: usage is unreliable and limits are"
                " not enforced until a rescan ends (the reconciler starts one).",
            ),
            build_info=GaugeMetricFamily(
                "btrfs_csi_build_info",
                "Always 1: the driver's version, CSI driver name and the node's kernel release.",
                labels=BUILD_LABELS,
            ),
            scrape_duration=GaugeMetricFamily(
                "btrfs_csi_scrape_duration_seconds",
                "How long the previous scrape of the pool took (reading it, not writing the text).",
            ),
            scrape_errors=CounterMetricFamily(
                "btrfs_csi_scrape_errors",
                "Scrapes that could not read part of the pool (the error is logged).",
            ),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families().all()

    def collect(self) -> Iterator[Metric]:
        start = time.perf_counter()
        families = self._families()
        with self._lock:
            try:
                self._collect_pool(families)
            except Exception:
                self._errors += 1
                log.exception("scraping pool %s failed; its metrics are incomplete", self._pool.root)
            families.build_info.add_metric(self._build_labels, 1)
            families.scrape_errors.add_metric((), self._errors)
            families.scrape_duration.add_metric((), self._last_duration)
            self._last_duration = time.perf_counter() - start
        yield from families.all()

    def _objects(
        self,
    ) -> tuple[list[tuple[Volume, tuple[LabelSet, LabelSet]]], list[tuple[Snapshot, LabelSet]]]:
        if self._volumes is None or self._snapshots is None:
            return (
                [(v, volume_label_sets(v)) for v in self._pool.list_volumes()],
                [(s, snapshot_labels(s)) for s in self._pool.list_snapshots()],
            )
        return self._volumes.refresh(), self._snapshots.refresh()

    def _collect_pool(self, f: "_Families") -> None:
        pool = self._pool
        status = pool.stats.quota_status()
        fs = pool.stats.fs_usage()
        # The listing first, then the usage of what it holds: an object deleted in between has no
        # usage and is left out this once.
        volumes, snapshots = self._objects()
        usage: dict[int, QgroupUsage] = pool.stats.snapshots_usage(snapshot for snapshot, _ in snapshots)
        volume_usage = pool.stats.volumes_usage(volume for volume, _labels in volumes)

        f.pool_size.add_metric((), fs.size)
        f.pool_used.add_metric((), fs.used)
        f.pool_free.add_metric((), fs.free)
        f.pool_volumes.add_metric((), len(volumes))
        f.pool_snapshots.add_metric((), len(snapshots))
        for mode in (QuotaMode.FULL, QuotaMode.SIMPLE):
            f.quota_mode.add_metric((mode.value,), int(status.mode is mode))
        f.inconsistent.add_metric((), int(status.inconsistent))
        f.read_only.add_metric((), int(pool.stats.read_only()))

        # Bound methods and flat lists: at 10,000 volumes this loop is a good part of a scrape.
        ref_labels, ref_values = f.volume_referenced.labels.append, f.volume_referenced.values.append
        excl_labels, excl_values = f.volume_exclusive.labels.append, f.volume_exclusive.values.append
        limit_labels, limit_values = f.volume_limit.labels.append, f.volume_limit.values.append
        f.volume_info.labels.extend([info for _volume, (_labels, info) in volumes])
        f.volume_info.values.extend([1] * len(volumes))
        for volume, (labels, _info) in volumes:
            qgroup = volume_usage.get(volume.id)
            if qgroup is None:
                continue  # quotas off, or deleted since the listing
            ref_labels(labels)
            ref_values(qgroup.referenced)
            excl_labels(labels)
            excl_values(qgroup.exclusive)
            if qgroup.limit is not None:
                limit_labels(labels)
                limit_values(qgroup.limit)

        snap_referenced, snap_exclusive = f.snapshot_referenced, f.snapshot_exclusive
        for snapshot, labels in snapshots:
            qgroup = usage.get(snapshot.subvolume_id)
            if qgroup is None:
                continue
            snap_referenced.labels.append(labels)
            snap_referenced.values.append(qgroup.referenced)
            snap_exclusive.labels.append(labels)
            snap_exclusive.values.append(qgroup.exclusive)


@dataclass(frozen=True)
class _Families:
    """One scrape's metric families, in exposition order."""

    volume_referenced: GaugeRows
    volume_exclusive: GaugeRows
    volume_info: GaugeRows
    volume_limit: GaugeRows
    snapshot_referenced: GaugeRows
    snapshot_exclusive: GaugeRows
    pool_size: GaugeMetricFamily
    pool_used: GaugeMetricFamily
    pool_free: GaugeMetricFamily
    pool_volumes: GaugeMetricFamily
    pool_snapshots: GaugeMetricFamily
    quota_mode: GaugeMetricFamily
    read_only: GaugeMetricFamily
    inconsistent: GaugeMetricFamily
    build_info: GaugeMetricFamily
    scrape_duration: GaugeMetricFamily
    scrape_errors: CounterMetricFamily

    def all(self) -> list[Metric]:
        return [getattr(self, field.name) for field in fields(self)]
