"""The reconciler: rescans, stale qgroups, staging debris; failures logged, never raised."""

import fcntl
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import CollectorRegistry

from btrfs_core import filesystem
from btrfs_core.pool import Pool
from btrfs_exporter import build_registry
from btrfs_exporter.reconciler import Reconciler, ReconcilerMetrics
from tests.exporter.helpers import btrfs, kernel_qgroups, write_file

MiB = 1 << 20
DRIVER = "btrfs.csi.test"


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"{name}{labels} not exported"
    return found


@pytest.mark.kernel
def test_stale_qgroups_are_counted_and_removed_when_the_kernel_lets_go(btrfs_mount: Path) -> None:
    # Simple quotas: a deleted volume's qgroup stays while a snapshot holds extents charged to it
    # (the kernel refuses to remove it), and becomes removable once the snapshot is gone too.
    pool = Pool.open(btrfs_mount, quota_mode="simple")
    metrics = build_registry(pool, DRIVER)
    reconciler = metrics.reconciler()
    registry = metrics.registry
    volume = pool.create_volume("vol", 32 * MiB)
    write_file(pool.volume_path(volume.id) / "f", 4 * MiB)
    pool.create_snapshot("snap", volume.id)
    pool.delete_volume(volume.id)
    btrfs("subvolume", "sync", str(btrfs_mount))
    filesystem.sync(pool.root)

    reconciler.run_once()
    assert value(registry, "btrfs_csi_pool_stale_qgroups") == 1
    assert value(registry, "btrfs_csi_stale_qgroups_removed_total") == 0
    assert volume.subvolume_id in kernel_qgroups(btrfs_mount)

    pool.delete_snapshot("snap")
    btrfs("subvolume", "sync", str(btrfs_mount))
    filesystem.sync(pool.root)
    reconciler.run_once()
    assert value(registry, "btrfs_csi_pool_stale_qgroups") == 1
    assert value(registry, "btrfs_csi_stale_qgroups_removed_total") == 1
    assert value(registry, "btrfs_csi_reconciler_actions_total", action="remove_stale_qgroup") == 1
    assert volume.subvolume_id not in kernel_qgroups(btrfs_mount)

    reconciler.run_once()
    assert value(registry, "btrfs_csi_pool_stale_qgroups") == 0
    assert value(registry, "btrfs_csi_reconciler_rounds_total") == 3
    for step in ("quota_consistency", "stale_qgroups", "staging"):
        assert value(registry, "btrfs_csi_reconciler_errors_total", step=step) == 0


@pytest.mark.kernel
def test_staging_debris_is_cleared(pool: Pool) -> None:
    metrics = build_registry(pool, DRIVER)
    btrfs("subvolume", "create", str(pool.staging_dir / "crashed.0123abcd"))
    (pool.staging_dir / "stray-file").write_text("left by a crash")
    metrics.reconciler().run_once()
    assert list(pool.staging_dir.iterdir()) == []
    assert value(metrics.registry, "btrfs_csi_reconciler_actions_total", action="clear_staging") == 2


@pytest.mark.kernel
def test_capacity_of_a_volume_deleted_by_hand_is_released(pool: Pool) -> None:
    metrics = build_registry(pool, DRIVER)
    released = {"name": "btrfs_csi_reconciler_actions_total", "action": "release_vanished_volume"}
    empty = pool.available_capacity()
    pool.create_volume("doomed", empty // 2 // MiB * MiB)
    pool.create_volume("kept", 16 * MiB)
    promised = pool.available_capacity()
    assert promised <= empty // 2
    btrfs("subvolume", "delete", str(pool.volumes_dir / "doomed"))  # behind the driver's back
    assert pool.available_capacity() == promised  # still promised: the driver has not looked yet

    metrics.reconciler().run_once()
    assert pool.available_capacity() > empty - 17 * MiB
    assert value(metrics.registry, **released) == 1
    assert value(metrics.registry, "btrfs_csi_reconciler_errors_total", step="vanished_volumes") == 0
    assert [volume.id for volume in pool.list_volumes()] == ["kept"]
    metrics.reconciler().run_once()  # nothing more to release
    assert value(metrics.registry, **released) == 1


@pytest.mark.kernel
def test_in_flight_creates_are_never_cleared(pool: Pool) -> None:
    # Pool.create_volume holds the pool lock for its whole staging phase and clear_staging takes the
    # same lock: a reconciler running flat out must never see (and delete) a volume being built.
    metrics = build_registry(pool, DRIVER)
    reconciler = metrics.reconciler(interval=0.001)
    reconciler.start()
    try:
        for i in range(40):
            pool.create_volume(f"v{i}", 2 * MiB)
            pool.create_snapshot(f"s{i}", f"v{i}")
    finally:
        assert reconciler.stop(timeout=30)
    assert len(pool.list_volumes()) == 40
    assert len(pool.list_snapshots()) == 40
    registry = metrics.registry
    assert value(registry, "btrfs_csi_reconciler_rounds_total") > 1
    assert value(registry, "btrfs_csi_reconciler_actions_total", action="clear_staging") == 0
    assert value(registry, "btrfs_csi_reconciler_errors_total", step="staging") == 0


@pytest.mark.kernel
def test_in_flight_deletes_are_never_cleared(pool: Pool) -> None:
    pool.create_volume("doomed", 2 * MiB)
    real_delete = pool._fs.delete_subvolume
    trashed, resume = threading.Event(), threading.Event()

    def paused_delete(path: Path) -> None:
        if threading.current_thread().name == "deleter":
            trashed.set()
            resume.wait(30)
        real_delete(path)

    pool._fs.delete_subvolume = paused_delete  # type: ignore[method-assign]
    failures: list[BaseException] = []

    def delete() -> None:
        try:
            pool.delete_volume("doomed")
        except BaseException as exc:
            failures.append(exc)

    deleter = threading.Thread(target=delete, name="deleter")
    deleter.start()
    try:
        assert trashed.wait(30)
        metrics = build_registry(pool, DRIVER)
        metrics.reconciler().run_once()  # the reconciler's round falls between rename and delete
    finally:
        resume.set()
        deleter.join(30)
    assert failures == []


FS_IOC_SETFLAGS, FS_IMMUTABLE_FL = 0x40086602, 0x10  # linux/fs.h: _IOW('f', 2, long)


def set_immutable(path: Path, immutable: bool) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("l", FS_IMMUTABLE_FL if immutable else 0))
    finally:
        os.close(fd)


@pytest.mark.kernel
def test_debris_that_resists_never_stops_start_up_and_is_counted_and_retried(
    btrfs_mount: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pool = Pool.open(btrfs_mount)
    stuck = pool.staging_dir / "stuck.0badc0de"
    btrfs("subvolume", "create", str(stuck))
    btrfs("subvolume", "create", str(pool.staging_dir / "crashed.0123abcd"))
    set_immutable(stuck, True)  # the kernel refuses to delete it (EPERM)
    try:
        reopened = Pool.open(btrfs_mount)  # start-up goes on, and clears what it can
        assert os.listdir(reopened.staging_dir) == [stuck.name]
        metrics = build_registry(reopened, DRIVER)
        reconciler = metrics.reconciler()
        for _ in range(2):
            reconciler.run_once()
        registry = metrics.registry
        assert value(registry, "btrfs_csi_staging_debris_entries") == 1
        assert value(registry, "btrfs_csi_staging_errors_total") == 2
        assert value(registry, "btrfs_csi_reconciler_errors_total", step="staging") == 0  # the step went on
        assert f"debris {stuck} not removed" in caplog.text
    finally:
        set_immutable(stuck, False)
    reconciler.run_once()
    assert os.listdir(reopened.staging_dir) == []
    assert value(registry, "btrfs_csi_staging_debris_entries") == 0
    assert value(registry, "btrfs_csi_staging_errors_total") == 2
    assert value(registry, "btrfs_csi_reconciler_actions_total", action="clear_staging") == 1


class _BrokenPool:
    """Every pool call fails, as on a filesystem that went away."""

    root = Path("/nonexistent/pool")

    @property
    def stats(self) -> "_BrokenPool":
        return self

    def __getattr__(self, name: str) -> Any:
        def fail(*args: object, **kwargs: object) -> None:
            raise OSError(5, f"Input/output error in {name}")

        return fail


def test_failures_are_logged_and_counted_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    pool = cast(Pool, _BrokenPool())
    reconciler = Reconciler(pool, ReconcilerMetrics(registry), interval=0.01)
    reconciler.run_once()
    for step in ("quota_consistency", "stale_qgroups", "staging"):
        assert value(registry, "btrfs_csi_reconciler_errors_total", step=step) == 1
    assert "Input/output error in quota_status" in caplog.text
    assert "Input/output error in clear_staging" in caplog.text
    assert reconciler.rounds_done.acquire(timeout=0)  # the round above

    reconciler.start()  # the thread survives failing rounds and keeps going
    try:
        for _ in range(3):
            assert reconciler.rounds_done.acquire(timeout=10)
    finally:
        assert reconciler.stop(timeout=10)
    assert value(registry, "btrfs_csi_reconciler_errors_total", step="staging") >= 4


def test_stop_is_prompt_even_with_a_long_interval() -> None:
    registry = CollectorRegistry()
    reconciler = Reconciler(cast(Pool, _BrokenPool()), ReconcilerMetrics(registry), interval=3600)
    reconciler.start()
    assert reconciler.rounds_done.acquire(timeout=10)  # the first round runs at once
    started = time.monotonic()
    assert reconciler.stop(timeout=10)
    assert time.monotonic() - started < 5
    with pytest.raises(ValueError):
        Reconciler(cast(Pool, _BrokenPool()), ReconcilerMetrics(CollectorRegistry()), interval=0)
