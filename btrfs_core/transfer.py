"""Snapshots that travel: a read-only snapshot of the pool, or a volume through a temporary read-only
snapshot, streamed out as a btrfs send stream, always named by ID, never by path; and a volume made
from such a stream, which another pool sent.

A receive is a restore whose source arrives as bytes: the capacity is promised before the first byte
is read, the stream lands in a subvolume of its own in staging, and the volume is made from what
arrived exactly as a local restore makes it from a snapshot (a writable snapshot in its own level-1
qgroup, the limit set, metadata written), but it stays in staging, out of sight, until the create that
asked for it claims it (renamed into volumes/, committed): a transfer whose requester gave up is
abandoned (removed) and never leaves a volume nobody knows of. A crash at any point leaves only
staging debris, which opening the pool removes.
"""

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from btrfs_core import ids, metadata, sendstream
from btrfs_core.builder import VolumeBuilder
from btrfs_core.capacity import Capacities, capacity_for, existing_volume
from btrfs_core.errors import BtrfsCoreError, InUse, InvalidArgument, NotFound
from btrfs_core.health import HealthCheck
from btrfs_core.models import NO_TUNING, Source, SourceKind, Tuning, TuningRequest, Volume
from btrfs_core.qgroups import VolumeQgroups
from btrfs_core.sendstream import ByteSource, Progress, Sink
from btrfs_core.shared import PoolShared
from btrfs_core.snapshots import Snapshots, refuse_nested
from btrfs_core.staging import Staging
from btrfs_core.tuning import resolve_tuning
from btrfs_core.writeback import Writeback

log = logging.getLogger(__name__)
T = TypeVar("T")

# A stream longer than this many times the capacity (plus room for its commands) is cut off: it
# holds a file's data uncompressed, so a volume of compressed data may send more bytes than its
# limit, but a stream that would fill the pool is a sender gone wrong.
_STREAM_PER_CAPACITY, _STREAM_COMMAND_BYTES = 2, 64 << 20


@dataclass(frozen=True)
class Received:
    """What Transfers.receive made: the volume, whole, its capacity reserved and its limit set, held in
    staging (`parked`) until Transfers.claim makes it visible or Transfers.abandon removes it. parked is
    None when the volume existed already (a repeated create): there is nothing to claim or abandon."""

    volume: Volume
    parked: Path | None


class Transfers:
    """The send streams of one pool, out and in; shares the pool's lock and commit."""

    def __init__(
        self,
        shared: PoolShared,
        qgroups: VolumeQgroups,
        staging: Staging,
        capacities: Capacities,
        snapshots: Snapshots,
        health: HealthCheck,
        builder: VolumeBuilder,
    ) -> None:
        self._volumes_dir = shared.root / "volumes"
        self._fs, self._meta, self._lock, self._commit = shared.fs, shared.meta, shared.lock, shared.commit
        self._qgroups = qgroups
        self._staging = staging
        self._capacities = capacities
        self._snapshots = snapshots
        self._health = health
        self._builder = builder  # builds the volume from what arrived, as a local restore
        # The ids of the volumes received or being received, unclaimed (needs the lock): their capacity
        # is promised before volumes/ holds them, which the reconciler must not take for vanished.
        self._receiving = capacities.arriving

    def send_snapshot(self, snapshot_id: str, out: Sink, progress: Progress | None = None) -> int:
        """Streams snapshot `snapshot_id` into out (a file descriptor or a writer); the bytes sent.
        progress, when given, is told the bytes sent so far after each chunk (the same in every call).

        Only a read-only snapshot of this pool: an ID that names nothing, a volume or a subvolume
        without the driver's snapshot metadata is NotFound; one made writable behind the driver's
        back is refused (its content could change while it is streamed)."""
        path = self._snapshots.path(snapshot_id)
        self._meta.snapshot(path)  # NotFound when it is not a snapshot of ours
        if not self._fs.subvolume_info(path).readonly:
            raise InvalidArgument(f"snapshot {snapshot_id} is not read-only: it was made writable, not sent")
        return _logged(f"send of snapshot {snapshot_id}", lambda: sendstream.send(path, out, progress))

    def send_volume(self, volume_id: str, out: Sink, progress: Progress | None = None) -> int:
        """Streams volume `volume_id` as it is now, through a temporary read-only snapshot in staging
        that is removed afterwards, whether the send succeeds or not (a crash leaves it to the clean-up
        of staging); the bytes sent."""
        with self._lock:
            origin = self._volume_location(volume_id)
            refuse_nested(self._fs, origin, f"volume {volume_id}")
            self._qgroups.after_rescan()
            staged = self._staging.path(volume_id)
            self._fs.snapshot(origin, staged, readonly=True)
            self._staging.busy.add(staged)
        try:
            with self._lock:
                refuse_nested(self._fs, origin, f"volume {volume_id}")  # one made meanwhile
                # Full qgroups: the snapshot marks accounting inconsistent, and no limit holds until a
                # rescan ends (as for any snapshot).
                self._qgroups.rescan_if_inconsistent()
            return _logged(f"send of volume {volume_id}", lambda: sendstream.send(staged, out, progress))
        finally:
            self._release(staged)

    def receive(
        self,
        name: str,
        required: int,
        source: Source,
        size: int,
        stream: ByteSource,
        metadata: Mapping[str, str] | None = None,
        limit: int = 0,
        tuning: TuningRequest | None = None,
        progress: Progress | None = None,
    ) -> Received:
        """Pool.create_volume from `source`, held by another pool, as the send stream of `source`
        (`size`: its size there, the least the volume can have); the volume stays in staging until
        claim or abandon.

        Idempotent as create_volume: when the volume exists already, nothing is read from stream. The
        capacity is reserved before the first byte is read (InsufficientCapacity, CapacityOutOfRange
        refuse it with the stream untouched); a second receive of the same volume while one runs or
        waits for its claim is InUse. stream: a file descriptor, anything with read(n), or an iterable
        of byte chunks. tuning: what was asked; the rest is the source's, as its metadata arrives in
        the stream.
        """
        volume_id = ids.object_id(name, "volume")
        wanted = dict(metadata or {})
        asked = tuning or TuningRequest()
        with self._lock:
            path = self._volumes_dir / volume_id
            existing = existing_volume(self._meta, path, name, required, limit, source, wanted, asked)
            if existing is not None:
                return Received(existing, None)
            if volume_id in self._receiving:
                raise InUse(f"volume {volume_id} is being received already")
            capacity = capacity_for(required, limit, source, size)
            resolve_tuning(asked, NO_TUNING, name)  # what was asked, refused before any byte moves
            self._health.check_writable(limits=True)
            self._capacities.reserve(volume_id, capacity)
            # A subvolume, not a directory: the clean-up of staging deletes it with whatever a crash
            # left inside, read-only or not, by subvolume ID.
            landing = self._staging.path(volume_id)
            try:
                self._fs.create_subvolume(landing)
            except BaseException:
                self._capacities.pop(volume_id)
                raise
            self._staging.busy.add(landing)
            self._receiving.add(volume_id)
        try:
            bound = capacity * _STREAM_PER_CAPACITY + _STREAM_COMMAND_BYTES
            with Writeback(self._fs.write_back) as writeback:
                meter = sendstream.Meter(bound, _told(progress, writeback.moved))
                received = _logged(
                    f"receive of volume {volume_id}", lambda: sendstream.receive(landing, stream, meter)
                )
            with self._lock:
                base = self._received_tuning(received, source)
                tuned = resolve_tuning(asked, base, f"{source.kind.value} {source.id}")
                parked = self._staging.path(volume_id)
                volume = self._builder.build(
                    volume_id, name, capacity, source, wanted, tuned, base, received=received, into=parked
                )
                self._staging.busy.add(parked)
        except BaseException:
            with self._lock:
                self._capacities.pop(volume_id)
                self._receiving.discard(volume_id)
            raise
        finally:
            self._release(landing)
        return Received(volume, parked)

    def claim(self, received: Received) -> Volume:
        """Makes a received volume visible: renamed into volumes/, committed. Once per Received."""
        volume = received.volume
        if received.parked is not None:
            with self._lock:
                self._fs.rename(received.parked, self._volumes_dir / volume.id)
                self._staging.busy.discard(received.parked)
                self._receiving.discard(volume.id)
                self._qgroups.joined(volume.subvolume_id, volume.qgroup)
            self._commit.commit()
        return volume

    def abandon(self, received: Received) -> None:
        """Removes a received volume nobody claimed (or whose claim failed): its subvolume, its
        capacity, its qgroup. It was never visible, so there is nothing to commit."""
        if received.parked is None:
            return  # it existed before this receive: not this receive's to remove
        volume = received.volume
        self._release(received.parked)
        with self._lock:
            self._capacities.pop(volume.id)
            self._receiving.discard(volume.id)
        self._qgroups.drop_group(volume.qgroup)

    def pending(self) -> set[str]:
        """The ids of the volumes received or being received and not claimed yet, whose capacity is
        reserved though volumes/ holds no such volume (needs the lock)."""
        return set(self._receiving)

    def _received_tuning(self, received: Path, source: Source) -> Tuning:
        """The tuning a received subvolume has: the compression its source's root had (a property the
        stream carries as an extended attribute, with the source's metadata), never nodatacow (a file
        flag, which stream version 1 does not carry)."""
        xattr = self._meta.snapshot_xattr if source.kind is SourceKind.SNAPSHOT else self._meta.volume_xattr
        try:
            compression = metadata.tuning_of(self._meta.read(received, xattr)).compression
        except NotFound:  # sent by a driver that kept no metadata there
            return NO_TUNING
        return Tuning(compression, nodatacow=False)

    def _volume_location(self, volume_id: str) -> Path:
        path = self._volumes_dir / ids.check_id(volume_id, "volume")
        if not self._fs.is_subvolume(path):
            raise NotFound(f"volume {volume_id} does not exist")
        self._meta.volume(path)  # NotFound when it is not a volume of ours
        return path

    def _release(self, staged: Path) -> None:
        """Removes what a transfer had in staging, now or, when that fails, in the next clean-up."""
        with self._lock:
            self._staging.busy.discard(staged)
            try:
                self._staging.discard(staged)
            except BtrfsCoreError as exc:
                log.warning("%s left for the clean-up of staging: %s", staged, exc)


def _told(progress: Progress | None, writeback: Progress) -> Progress:
    """One Progress telling both."""
    if progress is None:
        return writeback

    def both(total: int) -> None:
        writeback(total)
        progress(total)

    return both


def _logged(what: str, transfer: Callable[[], T]) -> T:
    """One log line as a transfer starts, one as it ends (or fails), with its duration."""
    log.info("%s: started", what)
    started = time.monotonic()
    try:
        result = transfer()
    except BaseException as exc:
        log.warning("%s: failed after %.1f s: %s", what, time.monotonic() - started, exc)
        raise
    log.info("%s: done in %.1f s", what, time.monotonic() - started)
    return result
