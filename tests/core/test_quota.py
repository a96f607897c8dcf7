"""btrfs_core.quota on the real kernel, in both quota modes, checked against `btrfs qgroup show` and sysfs."""

import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from btrfs_core import filesystem, ioctl, quota, subvolume, trees
from btrfs_core.errors import BtrfsCoreError, InvalidArgument, KernelError, NotFound
from btrfs_core.models import QgroupUsage, QuotaMode
from btrfs_core.pool import Pool

from .oracle import cli, qgroup_show, settle, subvolume_list, sysfs_quota_mode, write_random

pytestmark = pytest.mark.kernel

MiB = 1 << 20
EDQUOT = 122
SYSFS_MODE = {QuotaMode.FULL: "qgroup", QuotaMode.SIMPLE: "squota"}
QGROUP_STATUS_ON = 1  # BTRFS_QGROUP_STATUS_FLAG_ON (btrfs_tree.h); the driver reads only the other flags


def _as_cli(found: dict[int, QgroupUsage]) -> dict[int, tuple[int, int, int | None]]:
    return {qgroupid: (u.referenced, u.exclusive, u.limit) for qgroupid, u in found.items()}


def _cli_level0(mount: Path) -> dict[int, tuple[int, int, int | None]]:
    return {
        qgroupid: (q.referenced, q.exclusive, q.max_referenced) for qgroupid, q in qgroup_show(mount).items()
    }


def test_status_enable_and_disable_each_mode(btrfs_mount: Path) -> None:
    off = quota.status(btrfs_mount)
    assert (off.mode, off.inconsistent, off.rescan_running) == (QuotaMode.OFF, False, False)
    assert quota.usage_all(btrfs_mount) == {} and quota.exclusive_all(btrfs_mount) == {}
    with pytest.raises(NotFound):
        quota.usage(btrfs_mount, 5)
    with pytest.raises(InvalidArgument):
        quota.enable(btrfs_mount, QuotaMode.OFF)

    for mode in (QuotaMode.SIMPLE, QuotaMode.FULL, QuotaMode.SIMPLE):
        quota.enable(btrfs_mount, mode)
        status = quota.status(btrfs_mount)
        assert (status.mode, status.inconsistent, status.rescan_running) == (mode, False, False)
        assert sysfs_quota_mode(btrfs_mount) == SYSFS_MODE[mode]
        assert 5 in qgroup_show(btrfs_mount)  # the CLI sees quotas on
        cli("btrfs", "quota", "disable", str(btrfs_mount))
        assert quota.status(btrfs_mount).mode is QuotaMode.OFF
        assert quota.usage_all(btrfs_mount) == {}


def test_simple_mode_status_flags_are_on_and_simple(btrfs_mount: Path) -> None:
    quota.enable(btrfs_mount, QuotaMode.SIMPLE)
    with subvolume.opened(btrfs_mount) as fd:
        items = list(
            trees.tree_search(
                fd,
                ioctl.QUOTA_TREE,
                (0, ioctl.QGROUP_STATUS_KEY, 0),
                (0, ioctl.QGROUP_STATUS_KEY, 0),
                "status",
            )
        )
        flags = int.from_bytes(items[0][3][16:24], "little")
    assert flags == QGROUP_STATUS_ON | ioctl.QGROUP_STATUS_SIMPLE == 0x9


def test_limit_set_raise_and_clear_match_the_cli(quota_mount: tuple[Path, QuotaMode]) -> None:
    mount, _mode = quota_mount
    path = mount / "limits"
    subvolume.create(path)
    sid = subvolume.subvolume_id(path)
    assert quota.usage(mount, sid).limit is None
    assert qgroup_show(mount)[sid].max_referenced is None

    for limit in (10 * MiB, 20 * MiB, (1 << 62) + 4096, None):
        quota.set_limit(mount, sid, limit)
        assert quota.usage(mount, sid).limit == limit
        shown = qgroup_show(mount)[sid]
        assert shown.max_referenced == limit
        assert shown.max_exclusive is None  # only referenced bytes are limited

    for bad in (0, -1, ioctl.U64_MAX):
        with pytest.raises(InvalidArgument):
            quota.set_limit(mount, sid, bad)
    with pytest.raises((NotFound, KernelError)):
        quota.set_limit(mount, 999_999, MiB)


def test_usage_of_one_and_of_all_match_the_cli_after_sync(quota_mount: tuple[Path, QuotaMode]) -> None:
    mount, mode = quota_mount
    base = mount / "usage"
    base.mkdir()
    sizes = {"empty": 0, "small": 5000, "one": MiB, "nine": 9 * MiB + 123}
    for i, (name, size) in enumerate(sizes.items()):
        subvolume.create(base / name)
        if size:
            write_random(base / name / "data", size, seed=100 + i)
        quota.set_limit(mount, subvolume.subvolume_id(base / name), (i + 1) * 64 * MiB)
    # Shared extents: a snapshot, then part of the source overwritten.
    subvolume.snapshot(base / "nine", base / "nine-snap", readonly=True)
    write_random(base / "nine" / "data", 2 * MiB, seed=200, overwrite=True)
    filesystem.sync(mount)

    found = quota.usage_all(mount)
    assert _as_cli(found) == _cli_level0(mount)
    assert quota.exclusive_all(mount) == {qgroupid: usage.exclusive for qgroupid, usage in found.items()}
    ids = {entry.path: id_ for id_, entry in subvolume_list(mount).items()}
    for name in (*sizes, "nine-snap"):
        sid = ids[f"usage/{name}"]
        assert quota.usage(mount, sid) == found[sid]
    nine, snap = found[ids["usage/nine"]], found[ids["usage/nine-snap"]]
    assert nine.referenced >= 9 * MiB and found[ids["usage/one"]].referenced >= MiB
    if mode is QuotaMode.FULL:
        assert nine.exclusive < nine.referenced and snap.referenced >= 9 * MiB  # shared bytes
    else:
        assert snap.referenced < MiB  # simple quotas charge extents to the writer only
    with pytest.raises(NotFound):
        quota.usage(mount, 999_999)


def test_usage_all_spans_several_search_batches(quota_mount: tuple[Path, QuotaMode]) -> None:
    mount, _mode = quota_mount
    base = mount / "batches"
    subvolume.create(base)
    # 1,100 qgroups: 2,200 info and limit items of 72 bytes need several 64 KiB TREE_SEARCH batches.
    for i in range(1100):
        subvolume.create(base / f"s{i}")
        quota.set_limit(mount, subvolume.subvolume_id(base / f"s{i}"), MiB * (i + 1))
    filesystem.sync(mount)
    found = quota.usage_all(mount)
    assert len(found) > 1101
    assert _as_cli(found) == _cli_level0(mount)
    subvolume.delete(base)  # leave the pool small for the next tests; the cleaner drops them meanwhile


def _fill(path: Path) -> int:
    """Writes 4 KiB at a time until write() itself fails; returns the bytes accepted."""
    block = os.urandom(4096)
    accepted = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while True:
            try:
                written = os.write(fd, block)
            except OSError as exc:
                assert exc.errno == errno.EDQUOT == EDQUOT, exc
                return accepted
            accepted += written
            assert accepted < 1 << 30, "no EDQUOT"
    finally:
        os.close(fd)


def test_writes_past_the_limit_fail_with_edquot_at_write(quota_mount: tuple[Path, QuotaMode]) -> None:
    mount, _mode = quota_mount
    for limit in (8 * MiB, 40 * MiB):
        path = mount / f"edquot-{limit}"
        subvolume.create(path)
        quota.set_limit(mount, subvolume.subvolume_id(path), limit)
        accepted = _fill(path / "fill")
        assert limit - (64 << 10) <= accepted <= limit, (limit, accepted)
        # What was accepted stays accepted: the file is whole after a commit.
        filesystem.sync(mount)
        assert (path / "fill").stat().st_size == accepted
        # Raising the limit lets writes go on.
        quota.set_limit(mount, subvolume.subvolume_id(path), limit + 4 * MiB)
        with open(path / "more", "wb") as f:
            f.write(b"\0" * MiB)


def test_rescan_and_wait_clear_an_inconsistent_mark(btrfs_mount: Path) -> None:
    quota.enable(btrfs_mount, QuotaMode.FULL)
    subvolume.create(btrfs_mount / "v")
    write_random(btrfs_mount / "v" / "f", 4 * MiB, seed=7)
    subvolume.snapshot(btrfs_mount / "v", btrfs_mount / "s", readonly=True)
    write_random(btrfs_mount / "v" / "g", MiB, seed=8)
    filesystem.sync(btrfs_mount)
    sid = subvolume.subvolume_id(btrfs_mount / "v")
    # Putting a qgroup with shared extents under a parent without a rescan marks accounting inconsistent.
    cli("btrfs", "qgroup", "create", "1/100", str(btrfs_mount))
    cli("btrfs", "qgroup", "assign", "--no-rescan", f"0/{sid}", "1/100", str(btrfs_mount))
    assert quota.status(btrfs_mount).inconsistent

    quota.rescan(btrfs_mount)
    quota.wait_rescan(btrfs_mount)
    status = quota.status(btrfs_mount)
    assert (status.mode, status.inconsistent, status.rescan_running) == (QuotaMode.FULL, False, False)
    assert _as_cli(quota.usage_all(btrfs_mount)) == _cli_level0(btrfs_mount)
    # usage_all is level 0 only: the level-1 qgroup is not a subvolume.
    assert all(qgroupid < 1 << 48 for qgroupid in quota.usage_all(btrfs_mount))


def test_simple_quotas_have_no_rescan(btrfs_mount: Path) -> None:
    quota.enable(btrfs_mount, QuotaMode.SIMPLE)
    with pytest.raises(KernelError) as refused:
        quota.rescan(btrfs_mount)
    assert refused.value.errno == errno.EINVAL
    quota.wait_rescan(btrfs_mount)  # nothing to wait for
    assert quota.status(btrfs_mount).mode is QuotaMode.SIMPLE


def remove_stale(mount: Path) -> list[int]:
    """What a reconciler round does about stale qgroups: those the pool finds, removed if the kernel
    lets them go (a pool opened on the filesystem: its directories hold no subvolume)."""
    pool = Pool.open(mount)
    return pool.upkeep.remove_stale_qgroups(pool.upkeep.stale_qgroups())


def test_full_mode_kernel_drops_a_deleted_subvolumes_qgroup(btrfs_mount: Path) -> None:
    quota.enable(btrfs_mount, QuotaMode.FULL)
    subvolume.create(btrfs_mount / "keep")
    subvolume.create(btrfs_mount / "gone")
    write_random(btrfs_mount / "gone" / "f", 2 * MiB, seed=11)
    gone = subvolume.subvolume_id(btrfs_mount / "gone")
    subvolume.delete(btrfs_mount / "gone")
    settle(btrfs_mount)
    assert gone not in quota.usage_all(btrfs_mount) and gone not in qgroup_show(btrfs_mount)
    assert remove_stale(btrfs_mount) == []
    assert set(quota.usage_all(btrfs_mount)) == {5, subvolume.subvolume_id(btrfs_mount / "keep")}


def test_remove_stale_removes_only_qgroups_without_a_subvolume(btrfs_mount: Path) -> None:
    # The CLI's way to make a stale qgroup, `btrfs qgroup create 0/5000`, is refused (EINVAL) by this
    # kernel: it creates level-0 qgroups only for existing subvolumes. Simple quotas leave one behind
    # for real: a deleted subvolume whose extents a snapshot still holds keeps its qgroup (its charge
    # stays), and that qgroup stays when the snapshot goes too, with nothing left in it.
    quota.enable(btrfs_mount, QuotaMode.SIMPLE)
    for name in ("live", "source"):
        subvolume.create(btrfs_mount / name)
        write_random(btrfs_mount / name / "f", 4 * MiB, seed=len(name))
    subvolume.snapshot(btrfs_mount / "source", btrfs_mount / "holder", readonly=True)
    holder = subvolume.subvolume_id(btrfs_mount / "holder")
    live = {5, subvolume.subvolume_id(btrfs_mount / "live"), holder}
    source = subvolume.subvolume_id(btrfs_mount / "source")
    subvolume.delete(btrfs_mount / "source")
    settle(btrfs_mount)
    assert source not in subvolume.list_all(btrfs_mount)
    assert quota.usage_all(btrfs_mount)[source].referenced >= 4 * MiB
    assert set(qgroup_show(btrfs_mount)) == live | {source}

    # Still charged: the kernel refuses to destroy it (EBUSY), so nothing is removed yet.
    assert remove_stale(btrfs_mount) == []
    assert set(quota.usage_all(btrfs_mount)) == live | {source}

    subvolume.delete(btrfs_mount / "holder")
    settle(btrfs_mount)
    live.discard(holder)  # the kernel dropped the snapshot's qgroup itself
    assert set(quota.usage_all(btrfs_mount)) == live | {source}
    assert quota.usage_all(btrfs_mount)[source].referenced == 0

    assert remove_stale(btrfs_mount) == [source]
    assert set(quota.usage_all(btrfs_mount)) == live
    assert set(qgroup_show(btrfs_mount)) == live
    assert remove_stale(btrfs_mount) == []


def test_usage_of_one_reads_only_its_own_items(btrfs_mount: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    quota.enable(btrfs_mount, QuotaMode.SIMPLE)
    for i in range(300):
        subvolume.create(btrfs_mount / f"s{i}")
        quota.set_limit(btrfs_mount, subvolume.subvolume_id(btrfs_mount / f"s{i}"), MiB)
    ids = sorted(quota.usage_all(btrfs_mount))
    read: list[tuple[int, int]] = []
    real_items = trees.fixed_items

    def counting_items(
        fd: int, tree: int, objectid: int, item_type: int, *args: Any
    ) -> Iterator[tuple[Any, ...]]:
        for row in real_items(fd, tree, objectid, item_type, *args):
            read.append((item_type, row[0]))
            yield row

    monkeypatch.setattr(trees, "fixed_items", counting_items)
    for sid in (ids[1], ids[150], ids[-1]):
        read.clear()
        assert quota.usage(btrfs_mount, sid).limit == MiB
        # Its info item and its limit item; the bench shows what reading all 600 costs at 1,000.
        assert sorted(read) == [(ioctl.QGROUP_INFO_KEY, sid), (ioctl.QGROUP_LIMIT_KEY, sid)]


def test_items_of_another_size_than_expected_are_an_error(btrfs_mount: Path) -> None:
    quota.enable(btrfs_mount, QuotaMode.SIMPLE)
    subvolume.create(btrfs_mount / "s")
    info_items = (0, ioctl.QGROUP_INFO_KEY, (0, ioctl.U64_MAX))
    with subvolume.opened(btrfs_mount) as fd:
        rows = list(trees.fixed_items(fd, ioctl.QUOTA_TREE, *info_items, struct.Struct("<40x"), "pool"))
        assert len(rows) == 2 and {length for _offset, length in rows} == {40}  # 0/5 and the new one
        with pytest.raises(BtrfsCoreError, match="not 32 bytes"):
            list(trees.fixed_items(fd, ioctl.QUOTA_TREE, *info_items, struct.Struct("<32x"), "pool"))
