"""The item layouts of btrfs_tree.h as TREE_SEARCH returns them, and the item structs made from them."""

import struct

import pytest

from btrfs_core import trees


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
