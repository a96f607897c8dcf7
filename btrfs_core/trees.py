"""Reading btrfs trees with BTRFS_IOC_TREE_SEARCH_V2: the items' on-disk layouts (btrfs_tree.h) and
the search, resumed batch after batch, that returns them in key order."""

import ctypes
import itertools
import operator
import struct
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from btrfs_core import ioctl
from btrfs_core.errors import BtrfsCoreError
from btrfs_core.ioctl import FIRST_FREE_OBJECTID, U64_MAX

u16, u64 = ctypes.c_uint16, ctypes.c_uint64

# Items as TREE_SEARCH returns them: the on-disk layouts of btrfs_tree.h, little-endian and
# packed, read through item_struct. An item may be longer than its structure (a newer kernel's fields, a
# root ref's name). The search header before each item is the ioctl's own (struct
# btrfs_ioctl_search_header of linux/btrfs.h), which the kernel fills in native byte order.


class QgroupLimitItem(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = ioctl.QGROUP_LIMIT_FIELDS


class QgroupInfoItem(ctypes.LittleEndianStructure):
    _pack_ = 1
    _fields_ = [("generation", u64), ("rfer", u64), ("rfer_cmpr", u64), ("excl", u64), ("excl_cmpr", u64)]


class QgroupStatusItem(ctypes.LittleEndianStructure):
    """struct btrfs_qgroup_status_item (kernels with simple quotas append enable_gen, unread here)."""

    _pack_ = 1
    _fields_ = [("version", u64), ("generation", u64), ("flags", u64), ("rescan", u64)]


class RootRef(ctypes.LittleEndianStructure):
    """struct btrfs_root_ref (ROOT_REF and ROOT_BACKREF items); the name, name_len bytes, follows."""

    _pack_ = 1
    _fields_ = [("dirid", u64), ("sequence", u64), ("name_len", u16)]


_FIELD_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}  # struct codes of the unsigned fields by size


def item_struct(layout: type[ctypes.LittleEndianStructure], *fields: str) -> struct.Struct:
    """The struct of one `layout` item that unpacks the named fields (in layout order) and skips the
    rest: compiled from the structure's own offsets and sizes, for fixed_items and unpack_from. Not
    from_buffer_copy: that costs five times as much an item, and the quota tree is read by the tens of
    thousands of items (every qgroup on each scrape, and on each create for the capacity check)."""
    fmt, end = "<", 0
    for name in fields:
        field = getattr(layout, name)
        if field.offset < end:
            raise ValueError(f"{layout.__name__}: field {name} is not after the fields before it")
        fmt += (f"{field.offset - end}x" if field.offset > end else "") + _FIELD_CODES[field.size]
        end = field.offset + field.size
    size = ctypes.sizeof(layout)
    return struct.Struct(fmt + (f"{size - end}x" if size > end else ""))


QGROUP_LIMIT_ITEM_RFER = item_struct(QgroupLimitItem, "flags", "max_rfer")

assert ctypes.sizeof(QgroupInfoItem) == ctypes.sizeof(QgroupLimitItem) == 40 and ctypes.sizeof(RootRef) == 18

SEARCH_HEADER = struct.Struct("=QQQII")  # transid, objectid, offset, type, len: native, unpadded
_LENGTH = operator.itemgetter(1)  # of a fixed_items row


Key = tuple[int, int, int]  # (objectid, type, offset), the order keys compare in
Item = TypeVar("Item")


def _search(
    fd: int,
    tree_id: int,
    min_key: Key,
    max_key: Key,
    target: str,
    parse: Callable[[memoryview, int], tuple[list[Item], Key]],
    buffer_size: int = 1 << 16,
) -> Iterator[list[Item]]:
    """Every item with min_key <= key <= max_key, in key order, a batch at a time as `parse` makes
    them (of the items' bytes and their number; it returns them and the last one's key).

    TREE_SEARCH_V2 returns as many as fit the buffer, so the search resumes just past the last key
    returned.
    """
    buf = bytearray(ioctl.SEARCH_ARGS_V2_HEADER + buffer_size)
    view = memoryview(buf)
    start = min_key
    while True:
        key = ioctl.SearchKey.from_buffer(buf)
        key.tree_id = tree_id
        key.min_objectid, key.min_type, key.min_offset = start
        key.max_objectid, key.max_type, key.max_offset = max_key
        key.min_transid, key.max_transid = 0, U64_MAX
        key.nr_items = 0xFFFFFFFF
        struct.pack_into("=Q", buf, ctypes.sizeof(ioctl.SearchKey), buffer_size)  # native, as the key
        del key  # release the buffer export before the ioctl resizes nothing but reads it
        ioctl.call(fd, ioctl.IOC_TREE_SEARCH_V2, buf, "tree search", target)
        count = ioctl.SearchKey.from_buffer_copy(buf).nr_items
        if count == 0:
            return
        items, last = parse(view[ioctl.SEARCH_ARGS_V2_HEADER :], count)
        yield items
        following = _next_key(last)
        if following is None or following > max_key:
            return
        start = following


def _parse_items(items: memoryview, count: int) -> tuple[list[tuple[int, int, int, memoryview]], Key]:
    found = []
    pos = 0
    for _ in range(count):
        _transid, objectid, offset, item_type, length = SEARCH_HEADER.unpack_from(items, pos)
        pos += SEARCH_HEADER.size
        found.append((objectid, item_type, offset, items[pos : pos + length]))
        pos += length
    objectid, item_type, offset, _data = found[-1]
    return found, (objectid, item_type, offset)


def tree_search(
    fd: int, tree_id: int, min_key: Key, max_key: Key, target: str, buffer_size: int = 1 << 16
) -> Iterator[tuple[int, int, int, memoryview]]:
    """Every item (objectid, type, offset, data) with min_key <= key <= max_key, in key order (data
    valid until the next batch is searched: take what you need of an item before the next)."""
    return itertools.chain.from_iterable(
        _search(fd, tree_id, min_key, max_key, target, _parse_items, buffer_size)
    )


def fixed_items(
    fd: int,
    tree_id: int,
    objectid: int,
    item_type: int,
    offsets: tuple[int, int],
    item: struct.Struct,
    target: str,
) -> Iterator[tuple[Any, ...]]:
    """The items of one objectid and type with offsets first..last (`offsets`), all `item.size` bytes
    long: each as (offset, length, *item's fields), each batch unpacked by two C calls (`item` may skip
    fields with pad bytes): one over the search headers (native), one over the items (little-endian).
    At 20,000 qgroups the per-item Python of tree_search was most of a metrics scrape. An item of
    another size is a BtrfsCoreError."""
    header = struct.Struct(f"=16xQ4xI{item.size}x")  # offset and len of each (header, item) row
    fields = struct.Struct(f"<{SEARCH_HEADER.size}x" + item.format.lstrip("<"))
    first, last = offsets

    def parse(items: memoryview, count: int) -> tuple[list[tuple[Any, ...]], Key]:
        size = count * header.size
        batch = items[:size]
        rows = (
            list(map(operator.add, header.iter_unpack(batch), fields.iter_unpack(batch)))
            if size <= len(items)
            else []
        )
        if len(rows) != count or set(map(_LENGTH, rows)) != {item.size}:
            raise BtrfsCoreError(
                f"tree search: {target}: items of type {item_type} are not {item.size} bytes"
            )
        return rows, (objectid, item_type, rows[-1][0])

    return itertools.chain.from_iterable(
        _search(fd, tree_id, (objectid, item_type, first), (objectid, item_type, last), target, parse)
    )


def items_of_type(
    fd: int, tree_id: int, item_type: int, target: str, last_objectid: int = U64_MAX
) -> Iterator[tuple[int, int, memoryview]]:
    """Every item (objectid, offset, data) of one type with objectid FIRST_FREE_OBJECTID..last_objectid.

    A key range spans every type between its ends, so the items of other types are skipped here.
    """
    found = tree_search(
        fd, tree_id, (FIRST_FREE_OBJECTID, item_type, 0), (last_objectid, item_type, U64_MAX), target
    )
    for objectid, found_type, offset, data in found:
        if found_type == item_type:
            yield objectid, offset, data


def _next_key(key: tuple[int, int, int]) -> tuple[int, int, int] | None:
    objectid, item_type, offset = key
    if offset < U64_MAX:
        return objectid, item_type, offset + 1
    if item_type < 255:
        return objectid, item_type + 1, 0
    if objectid < U64_MAX:
        return objectid + 1, 0, 0
    return None
