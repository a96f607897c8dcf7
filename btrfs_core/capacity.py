"""How much the pool can still promise: the capacity model and the ledger of promises.

A volume's capacity is a promise that its pod can write that many bytes. The pool keeps every
promise only if the space data can really use covers what is already written plus everything every
volume may still write up to its limit:

    usable    = data block groups + unallocated device bytes / data copies, less a metadata reserve
    available = usable x overprovision - data in use - sum over volumes of max(0, limit - written)

and never more than is free right now (one volume cannot hold more than the pool). `data in use`
counts everything that holds data: volumes, snapshots (also of deleted volumes), clones. `written`
is what a volume's qgroup charges it beyond what others share (its exclusive bytes): under full
qgroups a volume sharing extents with a snapshot may still rewrite all of them, each rewrite new
data; under simple quotas what it wrote stays charged to it while a snapshot holds it.

The metadata reserve: btrfs keeps its global reserve in metadata, and data needs metadata as it is
written (checksums and extent items: measured 0.12% of the data for large files, 13% for 4 KiB
files). Metadata block groups are DUP on a single device, so each byte of metadata that does not fit
the existing metadata block groups costs two bytes of unallocated space that data cannot use.
The reserve is the global reserve plus 1/64 of the data capacity (room for files of about 64 KiB
and up); only what the metadata block groups cannot hold already is taken from unallocated space.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from btrfs_core.models import PoolSpace

# Metadata kept free per byte of data the pool can hold: covers the checksums and extent items of
# files of about 64 KiB and larger (see the module docstring for the measurements).
METADATA_SHARE = 1 / 64


def usable_data(space: PoolSpace) -> int:
    """Bytes of data the filesystem can hold in all, once metadata keeps its reserve."""
    whole = space.data.total + space.unallocated / space.data.copies
    reserve = space.global_reserve + whole * METADATA_SHARE
    if space.mixed:  # one kind of block group holds both: the reserve comes out of it directly
        return max(0, int(whole - reserve))
    missing = max(0.0, reserve - (space.metadata.total - space.metadata.used))
    spare = max(0.0, space.unallocated - missing * space.metadata.copies)
    return int(space.data.total + spare / space.data.copies)


def available_bytes(space: PoolSpace, unwritten: int, overprovision: float = 1.0) -> int:
    """The largest new promise: `unwritten` is what existing volumes may still write."""
    usable = usable_data(space)
    free_now = usable - space.data.used
    return max(0, min(free_now, int(usable * overprovision) - space.data.used - unwritten))


@dataclass(frozen=True)
class Promise:
    capacity: int
    qgroup: int | None  # the one that carries the volume's limit; None while the volume is being built


class Ledger:
    """Each volume's capacity and qgroup, kept as they change: reading 10,000 volumes' metadata on
    every create would cost more than the create's own system calls."""

    def __init__(self, promises: Mapping[str, Promise] | None = None) -> None:
        self._by_id = dict(promises or {})

    def get(self, volume_id: str) -> Promise | None:
        return self._by_id.get(volume_id)

    def put(self, volume_id: str, capacity: int, qgroup: int | None = None) -> None:
        self._by_id[volume_id] = Promise(capacity, qgroup)

    def pop(self, volume_id: str) -> None:
        self._by_id.pop(volume_id, None)

    def ids(self) -> set[str]:
        return set(self._by_id)

    def qgroups(self) -> dict[str, int]:
        """Volume id -> the qgroup that carries its limit, for volumes that have one."""
        return {vid: p.qgroup for vid, p in self._by_id.items() if p.qgroup is not None}

    def unwritten(self, written: Mapping[str, int], exclude: str | None = None) -> int:
        """What every volume (but `exclude`) may still write up to its limit, by what it has written."""
        return sum(
            max(0, promise.capacity - written.get(vid, 0))
            for vid, promise in self._by_id.items()
            if vid != exclude
        )
