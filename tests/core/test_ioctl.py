"""The item layouts of btrfs_tree.h as TREE_SEARCH returns them, the item structs made from them, and the
call itself."""

import ctypes
import os
import struct
import threading
import time
from pathlib import Path

import pytest

from btrfs_core import ioctl, subvolume, trees


def test_an_item_struct_reads_named_fields_at_the_structures_offsets() -> None:
    # generation, rfer, rfer_cmpr, excl, excl_cmpr; then bytes a newer kernel might append
    item = struct.pack("<5Q", 7, 1 << 40, 3, (1 << 64) - 2, 5) + b"\xff" * 8
    counts = trees.item_struct(trees.QgroupInfoItem, "rfer", "excl")
    assert counts.unpack_from(item) == (1 << 40, (1 << 64) - 2)
    assert counts.size == 40  # the whole item, as fixed_items needs
    assert trees.item_struct(trees.QgroupInfoItem, "excl").unpack_from(item) == ((1 << 64) - 2,)
    limit = struct.pack("<5Q", 1, 8 << 20, 0, 0, 0)
    assert trees.QGROUP_LIMIT_ITEM_RFER.unpack(limit) == (1, 8 << 20)


def test_a_root_ref_is_packed_and_followed_by_its_name() -> None:
    item = struct.pack("<QQH", 256, 9, 4) + b"data"
    ref = trees.item_struct(trees.RootRef, "dirid", "sequence", "name_len")
    assert ref.unpack_from(item) == (256, 9, 4)
    assert ref.size == 18  # the name starts right after name_len


def test_an_item_struct_wants_the_fields_in_layout_order() -> None:
    with pytest.raises(ValueError, match="field rfer is not after"):
        trees.item_struct(trees.QgroupInfoItem, "excl", "rfer")


class KernelSearchHeader(ctypes.Structure):
    """struct btrfs_ioctl_search_header (linux/btrfs.h), as the kernel copies it out: native order."""

    _fields_ = [
        ("transid", ctypes.c_uint64),
        ("objectid", ctypes.c_uint64),
        ("offset", ctypes.c_uint64),
        ("type", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    ]


def test_a_search_reads_the_header_in_native_order_and_the_items_little_endian(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """TREE_SEARCH_V2 as the kernel answers it: its own argument structures (the key, buf_size, each
    item's search header) in the CPU's byte order, the items copied from disk, little-endian. The two
    orders agree on this machine; on a big-endian one this is what tells them apart."""
    infos = {5: (1 << 40, 3 << 33), (1 << 48) | 7: (4096, (1 << 64) - 2)}  # qgroupid: rfer, excl

    def kernel(fd: int, request: int, buf: bytearray, operation: str, target: str) -> None:
        assert request == ioctl.IOC_TREE_SEARCH_V2
        key = ioctl.SearchKey.from_buffer(buf)
        size = ctypes.c_uint64.from_buffer(buf, ctypes.sizeof(ioctl.SearchKey)).value
        assert size == len(buf) - ioctl.SEARCH_ARGS_V2_HEADER
        found = [qgroupid for qgroupid in sorted(infos) if key.min_offset <= qgroupid <= key.max_offset]
        pos = ioctl.SEARCH_ARGS_V2_HEADER
        for qgroupid in found:
            rfer, excl = infos[qgroupid]
            item = bytes(trees.QgroupInfoItem(generation=1, rfer=rfer, excl=excl))
            header = KernelSearchHeader(9, 0, qgroupid, ioctl.QGROUP_INFO_KEY, len(item))
            buf[pos : pos + ctypes.sizeof(header) + len(item)] = bytes(header) + item
            pos += ctypes.sizeof(header) + len(item)
        key.nr_items = len(found)

    monkeypatch.setattr(ioctl, "call", kernel)
    info_items = (0, ioctl.QGROUP_INFO_KEY, (0, ioctl.U64_MAX))
    counts = trees.item_struct(trees.QgroupInfoItem, "rfer", "excl")
    rows = list(trees.fixed_items(-1, ioctl.QUOTA_TREE, *info_items, counts, "pool"))
    assert rows == [(qgroupid, 40, *usage) for qgroupid, usage in sorted(infos.items())]
    items = trees.tree_search(-1, ioctl.QUOTA_TREE, (0, 0, 0), (0, 255, ioctl.U64_MAX), "pool")
    assert [(objectid, kind, offset, counts.unpack(data)) for objectid, kind, offset, data in items] == [
        (0, ioctl.QGROUP_INFO_KEY, qgroupid, usage) for qgroupid, usage in sorted(infos.items())
    ]


@pytest.mark.parametrize("qgroups", [[], [5], [(1 << 48) | 3, 7]])
def test_a_qgroup_inherit_lists_its_qgroups_after_the_head(qgroups: list[int]) -> None:
    """struct btrfs_qgroup_inherit (linux/btrfs.h): four u64, a btrfs_qgroup_limit (five u64), then
    num_qgroups ids; native byte order, as every ioctl argument."""
    args = ioctl.VolArgsV2(name=b"new")
    inherit = ioctl.qgroup_inherit(args, qgroups)
    expected = struct.pack(f"=9Q{len(qgroups)}Q", 0, len(qgroups), *[0] * 7, *qgroups)
    assert args.flags & ioctl.SUBVOL_QGROUP_INHERIT
    assert args.size == len(expected) and args.qgroup_inherit == ctypes.addressof(inherit)
    assert ctypes.string_at(args.qgroup_inherit, args.size) == expected


@pytest.mark.kernel
def test_other_threads_run_while_an_ioctl_with_a_large_argument_works(btrfs_mount: Path) -> None:
    # A snapshot (4 KiB of arguments) first flushes its source's dirty data: long enough to see whether
    # another thread runs meanwhile. Holding the GIL through it, the other thread ran only at its edges.
    subvolume.create(btrfs_mount / "source")
    (btrfs_mount / "source" / "data").write_bytes(os.urandom(128 << 20))
    ticks: list[float] = []
    done = threading.Event()

    def tick() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            time.sleep(0.001)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        started = time.monotonic()
        subvolume.snapshot(btrfs_mount / "source", btrfs_mount / "snapshot", readonly=True)
        ended = time.monotonic()
    finally:
        done.set()
        ticker.join()
    quarter = (ended - started) / 4
    assert any(started + quarter < each < ended - quarter for each in ticks), (ended - started, len(ticks))
