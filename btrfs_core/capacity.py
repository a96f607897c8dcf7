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

A create is admitted on a reading of the pool's space up to SPACE_READING_SECONDS old (a tenth of a
second: tens of creates under load): concurrent creates share one instead of three ioctls each (7% of
a create's CPU under 16 clients, measured). It gives the answer the create would have had that much
earlier: every promise made since is in the ledger, and a released promise (a delete, whose data a
snapshot may keep) drops the reading. Only what was written since beyond the promises (data a
snapshot keeps once its volume overwrites it, files outside the pool's volumes) is not seen for that
tenth of a second, as a write just after a fresh reading would not be. A request that does not fit
the reading is judged on a fresh one.
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from btrfs_core.errors import AlreadyExists, CapacityOutOfRange, InsufficientCapacity, NotFound
from btrfs_core.metadata import MetadataStore, group_of
from btrfs_core.models import PoolSpace, Source, SubvolumeInfo, TuningRequest, Volume
from btrfs_core.tuning import check_same_tuning

MIN_VOLUME_BYTES = 1 << 20
DEFAULT_VOLUME_BYTES = 1 << 30  # the capacity of an empty volume asked for without required_bytes
MAX_VOLUME_BYTES = (1 << 63) - 1

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
    """Each volume's capacity and qgroup, and their sum, kept as they change: reading 10,000 volumes'
    metadata, or summing their promises, on every create would cost more than the create's own
    system calls."""

    def __init__(self, promises: Mapping[str, Promise] | None = None) -> None:
        self._by_id = dict(promises or {})
        self.promised = sum(promise.capacity for promise in self._by_id.values())

    def get(self, volume_id: str) -> Promise | None:
        return self._by_id.get(volume_id)

    def put(self, volume_id: str, capacity: int, qgroup: int | None = None) -> None:
        self.pop(volume_id)
        self._by_id[volume_id] = Promise(capacity, qgroup)
        self.promised += capacity

    def pop(self, volume_id: str) -> None:
        promise = self._by_id.pop(volume_id, None)
        if promise is not None:
            self.promised -= promise.capacity

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


class SpaceBackend(Protocol):
    def space(self) -> PoolSpace: ...
    def subvolume_info(self, path: Path) -> SubvolumeInfo: ...
    def exclusive_all(self) -> dict[int, int]: ...


def check_capacity(capacity: int) -> None:
    if not MIN_VOLUME_BYTES <= capacity <= MAX_VOLUME_BYTES:
        raise CapacityOutOfRange(
            f"capacity {capacity} is outside {MIN_VOLUME_BYTES}..{MAX_VOLUME_BYTES} bytes"
        )


def check_range(required: int, limit: int) -> None:
    if required < 0 or limit < 0:
        raise CapacityOutOfRange("capacity_range: required_bytes and limit_bytes must not be negative")
    if limit and limit < required:
        raise CapacityOutOfRange(f"capacity_range: limit_bytes {limit} is below required_bytes {required}")


def capacity_for(required: int, limit: int, source: Source | None, size: int) -> int:
    """The capacity of a new volume: `required` (at least the smallest volume); without it the
    source's size (`size`), or DEFAULT_VOLUME_BYTES cut to the limit. Never below the source's size (its
    data could not be written back), never above the limit: CapacityOutOfRange."""
    if required:
        capacity = max(required, MIN_VOLUME_BYTES)
        if source is not None and capacity < size:
            raise CapacityOutOfRange(
                f"capacity_range: required_bytes {required} is smaller than {source.kind.value} "
                f"{source.id} ({size} bytes)"
            )
    else:
        capacity = max(size or min(DEFAULT_VOLUME_BYTES, limit or DEFAULT_VOLUME_BYTES), MIN_VOLUME_BYTES)
    if limit and capacity > limit:
        raise CapacityOutOfRange(
            f"capacity_range: limit_bytes {limit} is below {capacity} bytes, the least this volume "
            "can have (the smallest volume, or its source's size)"
        )
    check_capacity(capacity)
    return capacity


def existing_volume(
    meta: MetadataStore,
    path: Path,
    name: str,
    required: int,
    limit: int,
    source: Source | None,
    metadata: dict[str, str],
    tuning: TuningRequest,
) -> Volume | None:
    """What a create (or a receive) of volume `name` finds at path, under the pool's lock: None when the
    name is free, the volume when it answers the request (a retry), else AlreadyExists.
    CapacityOutOfRange for a range no volume satisfies."""
    check_range(required, limit)
    existing = meta.existing(path, meta.volume)
    if existing is not None:
        _check_same_volume(existing, name, required, limit, source, metadata)
        check_same_tuning(existing, tuning, source is not None)
    return existing


def _check_same_volume(
    existing: Volume, name: str, required: int, limit: int, source: Source | None, metadata: dict[str, str]
) -> None:
    """Refuses (AlreadyExists) a request for an existing volume that the volume does not satisfy."""
    if existing.name != name:
        raise AlreadyExists(f"volume id {existing.id} belongs to another name, {existing.name!r}")
    if existing.source != source:
        raise AlreadyExists(f"volume {name!r} exists with source {existing.source}, not {source}")
    if existing.capacity < required or (limit and existing.capacity > limit):
        raise AlreadyExists(
            f"volume {name!r} exists with capacity {existing.capacity}, outside the range asked for "
            f"(required_bytes {required}, limit_bytes {limit or 'none'})"
        )
    if existing.metadata != metadata:
        differ = sorted(
            key
            for key in existing.metadata.keys() | metadata.keys()
            if existing.metadata.get(key) != metadata.get(key)
        )
        raise AlreadyExists(f"volume {name!r} exists with other parameters: {', '.join(differ)} differ")


SPACE_READING_SECONDS = 0.1


class Capacities:
    """The pool's promises: the ledger, read from the volumes' metadata on first use, and the checks
    a new or grown volume must pass. Every method needs the pool's lock."""

    def __init__(
        self,
        backend: SpaceBackend,
        meta: MetadataStore,
        overprovision: float,
        volume_paths: Callable[[], list[Path]],
    ) -> None:
        self._fs = backend
        self._meta = meta
        self._overprovision = overprovision
        self._volume_paths = volume_paths
        self._ledger: Ledger | None = None  # read on first use (see ledger)
        self.arriving: set[str] = set()  # promised, not in volumes/ yet (a receive: transfer.py)
        self._reading: tuple[float, PoolSpace] | None = None  # (when, the pool's space then)

    @property
    def ledger(self) -> Ledger:
        """Every volume's capacity, read from the pool on first use: the driver answers Probe before
        it has read 10,000 volumes' metadata; the first create pays for it."""
        if self._ledger is None:
            self._ledger = Ledger(self._scan())
        return self._ledger

    def _scan(self) -> dict[str, Promise]:
        """Every volume's capacity and qgroup: one getxattr and one subvolume-info ioctl each
        (10,000 volumes in well under a second)."""
        found = {}
        for path in self._volume_paths():
            try:
                meta = self._meta.volume_meta(path)
                qgroup = group_of(meta) or self._fs.subvolume_info(path).id
            except NotFound:
                continue  # vanished meanwhile, or not ours; a failure to read is raised
            found[path.name] = Promise(int(meta["capacity"]), qgroup)
        return found

    def put(self, volume_id: str, capacity: int, qgroup: int | None = None) -> None:
        self.ledger.put(volume_id, capacity, qgroup)

    def pop(self, volume_id: str) -> None:
        self.ledger.pop(volume_id)
        self._reading = None  # what the volume wrote may stay (a snapshot's), no longer promised

    def migrated(self, volume_id: str, capacity: int, qgroup: int) -> None:
        """A volume moved to its own level-1 qgroup (nothing to do before the first read)."""
        if self._ledger is not None:
            self._ledger.put(volume_id, capacity, qgroup)

    def reserve(self, volume_id: str, size: int) -> None:
        """Accounts capacity for a volume, or refuses when the pool cannot hold it.

        Only what the volume has not written yet needs room (it has, when it grows). The exact check
        reads what every volume has written; it runs only when the request does not fit even if no
        volume had written a byte (the others' whole promises counted as unwritten): anything that
        fits then fits the exact check too, so the answer is the same, and a pool that is not nearly
        full answers without reading 10,000 volumes' usage. The first check takes a recent reading of
        the pool's space, the exact one a fresh reading.
        """
        asked = time.monotonic()
        promise = self.ledger.get(volume_id)
        others = self.ledger.promised - (promise.capacity if promise else 0)
        if size > available_bytes(self._space(asked - SPACE_READING_SECONDS), others, self._overprovision):
            space = self._space(asked)  # the reading above, when it was taken for this call
            written = self._written_by_volume()
            unwritten = self.ledger.unwritten(written, exclude=volume_id)
            available = available_bytes(space, unwritten, self._overprovision)
            needed = size - written.get(volume_id, 0)
            if needed > available:
                raise InsufficientCapacity(
                    f"volume {volume_id}: {size} bytes requested, {needed} of them not written yet; "
                    f"the pool has {available} available"
                )
        self.ledger.put(volume_id, size, promise.qgroup if promise else None)

    def available(self) -> int:
        """The largest volume that can be created now."""
        unwritten = self.ledger.unwritten(self._written_by_volume())
        return available_bytes(self._space(time.monotonic()), unwritten, self._overprovision)

    def _space(self, since: float) -> PoolSpace:
        """The pool's space as read at `since` or later: the last reading, or a new one."""
        if self._reading is None or self._reading[0] < since:
            self._reading = (time.monotonic(), self._fs.space())  # the time before the read
        return self._reading[1]

    def release_vanished(self, existing: list[str]) -> list[str]:
        """Forgets the volumes of the ledger that are not among `existing` ids, nor arriving; returns them."""
        if self._ledger is None:
            return []  # not read yet: the first read sees only the volumes that exist
        gone = sorted(self._ledger.ids() - set(existing) - self.arriving)
        for volume_id in gone:
            self.pop(volume_id)
        return gone

    def _written_by_volume(self) -> dict[str, int]:
        """What each volume has written, by volume id: the exclusive bytes of the qgroup that carries
        its limit (volume_usage's, nested subvolumes included), every qgroup read in one TREE_SEARCH.
        The one place the capacity model reads volumes' usage."""
        exclusive = self._fs.exclusive_all()
        return {
            volume_id: exclusive[qgroup]
            for volume_id, qgroup in self.ledger.qgroups().items()
            if qgroup in exclusive
        }
