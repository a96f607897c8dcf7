"""What a clone or restore starts from: the source's subvolume, its size (the least the new volume may
have) and its tuning (what the new volume keeps unless asked otherwise)."""

from collections.abc import Callable
from pathlib import Path

from btrfs_core.backend import Backend
from btrfs_core.errors import CapacityOutOfRange
from btrfs_core.metadata import MetadataStore
from btrfs_core.models import Source, SourceKind, Tuning
from btrfs_core.snapshots import refuse_nested


class Sources:
    def __init__(
        self,
        backend: Backend,
        meta: MetadataStore,
        snapshot_path: Callable[[str], Path],
        volume_path: Callable[[str], Path],
    ) -> None:
        self._fs = backend
        self._meta = meta
        self._snapshot_path = snapshot_path
        self._volume_path = volume_path

    def size_and_tuning(self, source: Source) -> tuple[int, Tuning]:
        """The least size a volume made from `source` may have, and the tuning it keeps by default."""
        if source.kind is SourceKind.SNAPSHOT:
            snapshot = self._meta.snapshot(self._snapshot_path(source.id))
            return snapshot.size, snapshot.tuning
        volume = self._meta.volume(self._volume_path(source.id))
        return volume.capacity, volume.tuning

    def path(self, source: Source | None, capacity: int) -> Path | None:
        """The subvolume to snapshot for a volume of `capacity` bytes made from `source` (None: an
        empty volume); a volume holding nested subvolumes is refused."""
        if source is None:
            return None
        if source.kind is SourceKind.SNAPSHOT:
            path = self._snapshot_path(source.id)
            size = self._meta.snapshot(path).size
        else:
            path = self._volume_path(source.id)
            size = self._meta.volume(path).capacity
            refuse_nested(self._fs, path, f"volume {source.id}")
        if capacity < size:
            raise CapacityOutOfRange(
                f"capacity {capacity} is smaller than {source.kind.value} {source.id} ({size} bytes)"
            )
        return path
