"""Crash safety and durability of the Pool on the real kernel.

Crashes are real: a child process runs the operation and is SIGKILLed at a chosen point (see
crash_child.py). Power cuts are simulated by copying the pool's disk image at an instant and mounting
the copy: what the filesystem has not written to its device by then is lost, as in a power cut.
"""

import json
import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from btrfs_core import filesystem, subvolume
from btrfs_core.backend import KernelBackend
from btrfs_core.errors import NotFound
from btrfs_core.models import Source, SourceKind
from btrfs_core.pool import Pool

from .oracle import (
    RecordingBackend,
    device_of,
    hash_tree,
    power_cut_image,
    qgroup_show,
    settle,
    subvolume_list,
    subvolume_paths,
    superblock_generation,
    write_random,
)

pytestmark = pytest.mark.kernel

MiB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


def run_and_kill(root: Path, op: str, args: list[Any], stop: str) -> str:
    """Runs `op` in a child process, waits until it reaches `stop`, SIGKILLs it; returns its message."""
    read_end, write_end = os.pipe()
    spec = {"root": str(root), "fd": write_end, "op": op, "args": args, "stop": stop}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.core.crash_child", json.dumps(spec)],
        pass_fds=(write_end,),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
    )
    os.close(write_end)
    try:
        ready, _, _ = select.select([read_end], [], [], 60)
        message = os.read(read_end, 65536).decode() if ready else ""
    finally:
        os.close(read_end)
        child.send_signal(signal.SIGKILL)
        _, stderr = child.communicate(timeout=60)
    assert message, f"the child never reached {stop!r}: {stderr}"
    assert child.returncode == -signal.SIGKILL, (child.returncode, stderr)
    return message.strip()


def _staging_subvolumes(pool: Pool) -> list[Path]:
    return [entry for entry in pool.staging_dir.iterdir() if subvolume.is_subvolume(entry)]


def test_killed_before_rename_leaves_no_volume_and_open_clears_the_debris(btrfs_mount: Path) -> None:
    pool = Pool.open(btrfs_mount)
    message = run_and_kill(
        btrfs_mount, "create_volume", ["pvc-crash", 32 * MiB, None, {"a": "b"}], "rename-into-volumes"
    )
    assert message.startswith("stopped before rename")

    # Nothing half-made is visible; the half-made volume is real, and sits in staging.
    assert os.listdir(pool.volumes_dir) == []
    assert pool.list_volumes() == []
    with pytest.raises(NotFound):
        pool.get_volume("pvc-crash")
    debris = _staging_subvolumes(pool)
    assert len(debris) == 1 and debris[0].name.startswith("pvc-crash.")
    assert {p for p in subvolume_paths(btrfs_mount)} == {f".staging/{debris[0].name}"}

    # A retry on the pool that was open all along converges to exactly one volume.
    volume = pool.create_volume("pvc-crash", 32 * MiB, metadata={"a": "b"})
    assert pool.create_volume("pvc-crash", 32 * MiB, metadata={"a": "b"}) == volume

    # Opening the pool (a restarted driver) clears the debris and keeps the volume.
    reopened = Pool.open(btrfs_mount)
    assert os.listdir(reopened.staging_dir) == []
    assert reopened.list_volumes() == [volume]
    settle(btrfs_mount)
    assert subvolume_paths(btrfs_mount) == {"volumes/pvc-crash"}
    assert set(qgroup_show(btrfs_mount)) == {5, volume.subvolume_id}
    assert qgroup_show(btrfs_mount, 1)[volume.qgroup].max_referenced == 32 * MiB
    # The half-made volume's qgroup outlives its subvolume until repair_quotas removes it.
    assert reopened.upkeep.repair_quotas().orphans_removed == 1
    assert set(qgroup_show(btrfs_mount, 1)) == {volume.qgroup}


def test_killed_between_the_qgroup_and_the_subvolume_leaves_an_orphan_that_repair_removes(
    btrfs_mount: Path,
) -> None:
    Pool.open(btrfs_mount)
    message = run_and_kill(btrfs_mount, "create_volume", ["pvc-early", 8 * MiB, None, {}], "qgroup-created")
    orphan = int(message.rsplit(" ", 1)[1])
    restarted = Pool.open(btrfs_mount)
    assert restarted.list_volumes() == [] and os.listdir(restarted.staging_dir) == []
    assert set(qgroup_show(btrfs_mount, 1)) == {orphan}
    assert restarted.upkeep.repair_quotas().orphans_removed == 1
    assert qgroup_show(btrfs_mount, 1) == {}
    volume = restarted.create_volume("pvc-early", 8 * MiB)
    assert set(qgroup_show(btrfs_mount, 1)) == {volume.qgroup}


def test_killed_before_rename_then_restart_then_retry(btrfs_mount: Path) -> None:
    Pool.open(btrfs_mount)
    run_and_kill(btrfs_mount, "create_volume", ["pvc-retry", 8 * MiB, None, {}], "rename-into-volumes")
    restarted = Pool.open(btrfs_mount)
    assert os.listdir(restarted.staging_dir) == [] and restarted.list_volumes() == []
    settle(btrfs_mount)
    assert subvolume_paths(btrfs_mount) == set()
    volume = restarted.create_volume("pvc-retry", 8 * MiB)
    assert Pool.open(btrfs_mount).list_volumes() == [volume]
    assert subvolume_paths(btrfs_mount) == {"volumes/pvc-retry"}


def test_killed_clone_before_rename_leaves_the_source_untouched(btrfs_mount: Path) -> None:
    pool = Pool.open(btrfs_mount)
    source = pool.create_volume("pvc-src", 16 * MiB, metadata={"k": "v"})
    write_random(pool.volume_path(source.id) / "f", MiB, seed=71)
    snapshot = pool.create_snapshot("snap-src", source.id)
    expected = hash_tree(pool.volume_path(source.id))
    run_and_kill(
        btrfs_mount,
        "create_volume",
        ["pvc-clone", 32 * MiB, ["snapshot", "snap-src"], {}],
        "rename-into-volumes",
    )
    reopened = Pool.open(btrfs_mount)
    assert reopened.list_volumes() == [source] and reopened.list_snapshots() == [snapshot]
    assert os.listdir(reopened.staging_dir) == []
    assert hash_tree(reopened.volume_path(source.id)) == expected
    clone = reopened.create_volume("pvc-clone", 32 * MiB, Source(SourceKind.SNAPSHOT, "snap-src"))
    assert hash_tree(reopened.volume_path(clone.id)) == expected
    assert qgroup_show(btrfs_mount, 1)[clone.qgroup].max_referenced == 32 * MiB


def test_killed_mid_delete_hides_the_volume_and_open_finishes_the_delete(btrfs_mount: Path) -> None:
    pool = Pool.open(btrfs_mount)
    volume = pool.create_volume("pvc-del", 16 * MiB)
    write_random(pool.volume_path(volume.id) / "f", MiB, seed=72)
    snapshot = pool.create_snapshot("snap-del", volume.id)  # refused once a nested subvolume is there
    subvolume.create(pool.volume_path(volume.id) / "nested")
    message = run_and_kill(btrfs_mount, "delete_volume", ["pvc-del"], "delete-subvolume")
    assert message.startswith("stopped before deleting") and "/.staging/pvc-del." in message

    assert os.listdir(pool.volumes_dir) == [] and pool.list_volumes() == []
    assert len(_staging_subvolumes(pool)) == 1
    pool.delete_volume("pvc-del")  # a retried DeleteVolume answers OK: the volume is gone

    reopened = Pool.open(btrfs_mount)
    assert os.listdir(reopened.staging_dir) == []
    settle(btrfs_mount)
    assert subvolume_paths(btrfs_mount) == {"snapshots/snap-del"}
    assert reopened.get_snapshot("snap-del") == snapshot


def test_killed_before_the_snapshot_leaves_no_snapshot(btrfs_mount: Path) -> None:
    pool = Pool.open(btrfs_mount)
    volume = pool.create_volume("pvc-snap", 16 * MiB, metadata={"k": "v"})
    message = run_and_kill(btrfs_mount, "create_snapshot", ["snap-a", "pvc-snap"], "snapshot")
    assert message.startswith("stopped before snapshot")
    reopened = Pool.open(btrfs_mount)
    assert os.listdir(reopened.snapshots_dir) == [] and reopened.list_snapshots() == []
    assert reopened.list_volumes() == [volume]
    # Nothing of the snapshot's metadata is on the volume's root, nor leaks into a clone.
    clone = reopened.create_volume("pvc-snap-clone", 16 * MiB, Source(SourceKind.VOLUME, "pvc-snap"))
    assert KernelBackend.metadata_xattr + ".snapshot" not in os.listxattr(reopened.volume_path(clone.id))
    snapshot = reopened.create_snapshot("snap-a", "pvc-snap")
    assert snapshot.source_volume_id == "pvc-snap" and snapshot.size == 16 * MiB
    assert [p for p in subvolume_paths(btrfs_mount) if p.startswith("snapshots/")] == ["snapshots/snap-a"]


def test_killed_right_after_the_snapshot_leaves_a_complete_snapshot(btrfs_mount: Path) -> None:
    pool = Pool.open(btrfs_mount)
    pool.create_volume("pvc-snap2", 16 * MiB)
    message = run_and_kill(btrfs_mount, "create_snapshot", ["snap-b", "pvc-snap2"], "snapshot-made")
    assert message.startswith("stopped after the snapshot")
    reopened = Pool.open(btrfs_mount)
    made = reopened.get_snapshot("snap-b")  # visible means whole: its metadata came with it
    assert made.source_volume_id == "pvc-snap2" and made.size == 16 * MiB
    assert reopened.create_snapshot("snap-b", "pvc-snap2") == made
    assert [p for p in subvolume_paths(btrfs_mount) if p.startswith("snapshots/")] == ["snapshots/snap-b"]


@pytest.mark.parametrize("stop", ["snapshot-staged", "snapshot-rename"])
def test_killed_while_building_a_snapshot_leaves_no_snapshot_and_open_clears_the_debris(
    btrfs_mount: Path, stop: str
) -> None:
    pool = Pool.open(btrfs_mount)
    volume = pool.create_volume("pvc-half", 16 * MiB)
    write_random(pool.volume_path(volume.id) / "f", MiB, seed=7)
    expected = hash_tree(pool.volume_path(volume.id))
    message = run_and_kill(btrfs_mount, "create_snapshot", ["snap-half", volume.id], stop)
    assert message.startswith(
        "stopped after snapshot" if stop == "snapshot-staged" else "stopped before rename"
    )

    # Half-made, it sits under a hidden name that no listing or lookup can reach.
    assert pool.list_snapshots() == [] and pool.list_snapshot_ids() == []
    with pytest.raises(NotFound):
        pool.get_snapshot("snap-half")
    (debris,) = [p for p in subvolume_paths(btrfs_mount) if p.startswith("snapshots/")]
    assert debris.startswith("snapshots/.snap-half.")
    assert os.listxattr(pool.volume_path(volume.id)) == [KernelBackend.metadata_xattr]

    reopened = Pool.open(btrfs_mount)
    assert os.listdir(reopened.snapshots_dir) == []
    snapshot = reopened.create_snapshot("snap-half", volume.id)
    assert hash_tree(reopened.snapshots_dir / snapshot.id) == expected
    settle(btrfs_mount)
    assert subvolume_paths(btrfs_mount) == {"volumes/pvc-half", "snapshots/snap-half"}


def test_every_change_is_committed_before_the_call_returns(
    btrfs_mount: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = RecordingBackend(btrfs_mount)
    pool = Pool.open(btrfs_mount, backend=backend)
    device = device_of(btrfs_mount)
    real_setxattr = os.setxattr

    def logged_setxattr(*args: Any, **kwargs: Any) -> None:
        backend.changes.append("setxattr")
        real_setxattr(*args, **kwargs)

    monkeypatch.setattr(os, "setxattr", logged_setxattr)
    steps: dict[str, Callable[[], object]] = {
        "create": lambda: pool.create_volume("pvc-durable", 8 * MiB),
        "expand": lambda: pool.expand_volume("pvc-durable", 16 * MiB),
        "snapshot": lambda: pool.create_snapshot("snap-durable", "pvc-durable"),
        "restore": lambda: pool.create_volume("pvc-r", 16 * MiB, Source(SourceKind.SNAPSHOT, "snap-durable")),
        "delete snapshot": lambda: pool.delete_snapshot("snap-durable"),
        "delete": lambda: pool.delete_volume("pvc-durable"),
    }
    for step, action in steps.items():
        backend.changes.clear()
        action()
        assert backend.changes[-1] == "sync" and len(backend.changes) > 1, (step, backend.changes)
        assert backend.changes.count("sync") == 1, (step, backend.changes)
        if step in ("create", "restore"):
            # The superblock on the device names a transaction at least as new as the volume.
            created_in = subvolume.info(pool.volumes_dir / ("pvc-durable" if step == "create" else "pvc-r"))
            assert superblock_generation(device) >= created_in.generation


def test_a_created_volume_survives_a_power_cut(btrfs_mount: Path, tmp_path: Path) -> None:
    pool = Pool.open(btrfs_mount)
    # The method can see a loss: a subvolume made without a commit is not on the disk yet.
    subvolume.create(btrfs_mount / "uncommitted")
    with power_cut_image(btrfs_mount, tmp_path) as disk:
        assert not (disk / "uncommitted").exists()
        assert {p.name for p in disk.iterdir()} == {"volumes", "snapshots", ".staging"}
    subvolume.delete(btrfs_mount / "uncommitted")

    message = run_and_kill(
        btrfs_mount, "create_volume", ["pvc-power", 24 * MiB, None, {"pvc": "x"}], "returned"
    )
    made = json.loads(message.removeprefix("returned "))
    live = pool.get_volume("pvc-power")
    assert made == {"id": "pvc-power", "subvolume_id": live.subvolume_id}
    with power_cut_image(btrfs_mount, tmp_path) as disk:
        assert os.listdir(disk / "volumes") == ["pvc-power"]
        survived = subvolume_list(disk)
        assert {entry.path for entry in survived.values()} == {"volumes/pvc-power"}
        xattr = KernelBackend.metadata_xattr
        assert os.getxattr(disk / "volumes" / "pvc-power", xattr) == os.getxattr(
            pool.volume_path("pvc-power"), xattr
        )
        assert qgroup_show(disk, 1)[live.qgroup].max_referenced == 24 * MiB

    run_and_kill(btrfs_mount, "expand_volume", ["pvc-power", 40 * MiB], "returned")
    with power_cut_image(btrfs_mount, tmp_path) as disk:
        assert qgroup_show(disk, 1)[live.qgroup].max_referenced == 40 * MiB
        restored = json.loads(os.getxattr(disk / "volumes" / "pvc-power", KernelBackend.metadata_xattr))
        assert restored["capacity"] == 40 * MiB

    run_and_kill(btrfs_mount, "create_snapshot", ["snap-power", "pvc-power"], "returned")
    run_and_kill(btrfs_mount, "delete_volume", ["pvc-power"], "returned")
    with power_cut_image(btrfs_mount, tmp_path) as disk:
        assert os.listdir(disk / "volumes") == []
        assert os.listdir(disk / "snapshots") == ["snap-power"]
        assert "volumes/pvc-power" not in subvolume_paths(disk)
    filesystem.sync(btrfs_mount)
