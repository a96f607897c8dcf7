"""Per-volume tuning: what a new volume gets, and a live volume's compression changed.

A volume's tuning is in its metadata and on its subvolume root (btrfs_core/properties.py), where new
files inherit it; it applies to data written after it is set. nodatacow is fixed at creation: files
already written keep their copy-on-write state whatever the root says later.
"""

import dataclasses
from collections.abc import Callable
from pathlib import Path

from btrfs_core import metadata
from btrfs_core.errors import AlreadyExists, InsufficientCapacity, InvalidArgument
from btrfs_core.models import Algorithm, Compression, Tuning, TuningRequest, Volume
from btrfs_core.shared import PoolShared


def resolve_tuning(asked: TuningRequest, base: Tuning, what: str) -> Tuning:
    """The tuning a volume gets: what was asked, over `base` for what was not (none for a new volume,
    the source's for a clone or restore). Asking for nodatacow drops a compression that was not asked.

    InvalidArgument for nodatacow with compression: nodatacow data is never compressed, and the kernel
    refuses a compression property on a nodatacow directory.
    """
    nodatacow = base.nodatacow if asked.nodatacow is None else asked.nodatacow
    if asked.compression is not None:
        compression: Compression | None = asked.compression
    else:
        compression = None if asked.nodatacow else base.compression
    if nodatacow and compression is not None and compression.algorithm is not Algorithm.NONE:
        origin = "asked for" if asked.nodatacow else f"of {what}"
        raise InvalidArgument(
            f"compression {compression} cannot go with nodatacow (true, {origin}): data written in place "
            "is never compressed"
        )
    return Tuning(compression, nodatacow)


def check_same_tuning(existing: Volume, asked: TuningRequest, has_source: bool) -> None:
    """Refuses (AlreadyExists) a repeated CreateVolume that asks for another tuning than the volume's.
    Without a source every field counts (not asked: none); a clone or restore compares only the fields
    asked for, the others being whatever its source had."""
    if has_source:
        wanted = Tuning(
            existing.tuning.compression if asked.compression is None else asked.compression,
            existing.tuning.nodatacow if asked.nodatacow is None else asked.nodatacow,
        )
    else:
        wanted = resolve_tuning(asked, Tuning(), f"volume {existing.id}")
    if wanted != existing.tuning:
        raise AlreadyExists(
            f"volume {existing.name!r} exists with other parameters: {describe(existing.tuning)}, not "
            f"{describe(wanted)}"
        )


def describe(tuning: Tuning) -> str:
    return f"compression {tuning.compression or 'unset'}, nodatacow {str(tuning.nodatacow).lower()}"


class VolumeTuning:
    """Changes the compression of live volumes; shares the pool's lock and commit. `changed` is told
    the ID of each volume whose metadata it rewrote, once it is written (the pool's indexes read that
    volume again)."""

    def __init__(
        self,
        shared: PoolShared,
        volume_path: Callable[[str], Path],
        check_writable: Callable[[], None],
        changed: Callable[[str], None],
    ) -> None:
        self._fs, self._meta, self._lock, self._commit = shared.fs, shared.meta, shared.lock, shared.commit
        self._volume_path = volume_path
        self._check_writable = check_writable
        self._changed = changed

    def modify(self, volume_id: str, compression: Compression | None) -> Volume:
        """Sets a volume's compression, published or not; idempotent. Answers once the property and
        the metadata are committed: the property first, so the metadata never claims what the kernel
        does not do (a crash in between leaves the old metadata, and the CO retries)."""
        with self._lock:
            path = self._volume_path(volume_id)
            volume = self._meta.volume(path)
            if compression is None:
                return volume
            tuning = resolve_tuning(
                TuningRequest(compression=compression), volume.tuning, f"volume {volume_id}"
            )
            self._check_writable()
            try:
                self._fs.apply_tuning(path, tuning)
                meta = self._meta.volume_meta(path)
                meta["tuning"] = metadata.tuning_fields(tuning)
                self._meta.write(path, meta)
            except InsufficientCapacity:
                # Both live in the volume's own tree, which its limit covers: EDQUOT when it is full.
                raise InsufficientCapacity(
                    f"volume {volume_id} is full to its limit, so its compression cannot be stored: free "
                    "some space in it or expand it"
                ) from None
            self._changed(volume_id)
        self._commit.commit()
        return dataclasses.replace(volume, tuning=tuning)
