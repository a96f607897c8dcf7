"""The on-disk metadata of volumes and snapshots, in one place.

Each object's metadata is one JSON object in an extended attribute of its subvolume's root directory
(the backend names the attribute: trusted.* on the kernel, where a pod can neither read nor forge it):

    volume    <xattr>           {"version", "kind": "volume", "name", "capacity", "qgroup", "source",
                                 "metadata", "tuning"}
    snapshot  <xattr>.snapshot  {"version", "kind": "snapshot", "name", "source_volume_id", "size",
                                 "tuning"}
    pool root <xattr>.quota-mode {"version", "quota_mode"}

A snapshot's metadata has its own attribute so that a restore, which copies the snapshot's attributes,
never mistakes it for its own. Metadata written before the version field existed has the fields of
version 1 and reads as such.

A field added later is optional and has a default: "tuning" ({"compression": "zstd:3" or null,
"nodatacow": bool}) is absent from metadata written before it existed and reads as no tuning, and a
driver that predates it ignores it (the kernel keeps applying the properties). So adding one keeps
the version; the version grows only when a field changes meaning, which an older driver must refuse.

Reading tells a refusal from a failure: an object without our attribute is not ours (NotFound); an
attribute that cannot be read (EIO, EACCES, ...) is a failure and raised as one, never taken for absence.
"""

import contextlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

from btrfs_core import quota
from btrfs_core.errors import AlreadyExists, BtrfsCoreError, NotFound
from btrfs_core.models import (
    NO_TUNING,
    Compression,
    QuotaMode,
    Snapshot,
    Source,
    SourceKind,
    SubvolumeInfo,
    Tuning,
    Volume,
)

VERSION = 1
T = TypeVar("T")


class XattrBackend(Protocol):
    metadata_xattr: str

    def read_xattr(self, path: Path, name: str) -> bytes | None: ...
    def write_xattr(self, path: Path, name: str, value: bytes) -> None: ...
    def remove_xattr(self, path: Path, name: str) -> None: ...
    def subvolume_info(self, path: Path) -> SubvolumeInfo: ...
    def is_subvolume(self, path: Path) -> bool: ...
    def exists(self, path: Path) -> bool: ...


def encode(fields: Mapping[str, Any]) -> bytes:
    return json.dumps({**fields, "version": VERSION}, sort_keys=True).encode()


def decode(raw: bytes, where: Path) -> dict[str, Any]:
    """The fields of one attribute's value; NotFound when it is not metadata of ours."""
    try:
        fields = json.loads(raw)
    except ValueError as exc:
        raise NotFound(f"{where} has no readable metadata: {exc}") from None
    if not isinstance(fields, dict):
        raise NotFound(f"{where} has no readable metadata: not a JSON object")
    version = fields.get("version", 1)
    if not isinstance(version, int) or version > VERSION:
        raise BtrfsCoreError(f"{where}: metadata version {version!r} is newer than this driver's ({VERSION})")
    return fields


def volume_fields(
    name: str,
    capacity: int,
    qgroup: int,
    source: Source | None,
    metadata: Mapping[str, str],
    tuning: Tuning = NO_TUNING,
) -> dict[str, Any]:
    return {
        "kind": "volume",
        "name": name,
        "capacity": capacity,
        "qgroup": qgroup,
        "source": {"kind": source.kind.value, "id": source.id} if source else None,
        "metadata": dict(metadata),
        "tuning": tuning_fields(tuning),
    }


def snapshot_fields(
    name: str, source_volume_id: str, size: int, tuning: Tuning = NO_TUNING
) -> dict[str, Any]:
    return {
        "kind": "snapshot",
        "name": name,
        "source_volume_id": source_volume_id,
        "size": size,
        "tuning": tuning_fields(tuning),
    }


def tuning_fields(tuning: Tuning) -> dict[str, Any]:
    compression = tuning.compression
    return {"compression": str(compression) if compression else None, "nodatacow": tuning.nodatacow}


def tuning_of(meta: Mapping[str, Any]) -> Tuning:
    """The tuning in an object's metadata; none for metadata written before tuning existed."""
    fields = meta.get("tuning") or {}
    compression = fields.get("compression")
    return Tuning(Compression.parse(compression) if compression else None, bool(fields.get("nodatacow")))


def group_of(meta: Mapping[str, Any]) -> int | None:
    """The level-1 qgroup a volume's metadata names; None for a volume made before there were any."""
    group = meta.get("qgroup")
    return group if isinstance(group, int) and group >= quota.LEVEL1 else None


def as_volume(volume_id: str, meta: Mapping[str, Any], info: SubvolumeInfo) -> Volume:
    """The volume that metadata `meta` (as written or read back) describes on its subvolume `info`."""
    source = meta.get("source")
    return Volume(
        id=volume_id,
        name=meta["name"],
        capacity=meta["capacity"],
        source=Source(SourceKind(source["kind"]), source["id"]) if source else None,
        subvolume_id=info.id,
        qgroup=group_of(meta) or info.id,
        created=info.otime,
        metadata=dict(meta.get("metadata", {})),
        tuning=tuning_of(meta),
    )


class MetadataStore:
    """Reads and writes the metadata of the objects of one pool through its backend."""

    def __init__(self, backend: XattrBackend) -> None:
        self._fs = backend
        self.volume_xattr = backend.metadata_xattr
        self.snapshot_xattr = backend.metadata_xattr + ".snapshot"
        self.quota_mode_xattr = backend.metadata_xattr + ".quota-mode"

    def read(self, path: Path, xattr: str | None = None) -> dict[str, Any]:
        raw = self._fs.read_xattr(path, xattr or self.volume_xattr)
        if raw is None:
            raise NotFound(f"{path} has no metadata of this driver")
        return decode(raw, path)

    def write(self, path: Path, fields: Mapping[str, Any], xattr: str | None = None) -> None:
        self._fs.write_xattr(path, xattr or self.volume_xattr, encode(fields))

    def existing(self, path: Path, read: Callable[[Path], T]) -> T | None:
        """The object at path, None when the name is free; AlreadyExists when something this driver
        did not make (no metadata, not a subvolume) holds the name: it is neither reused nor replaced."""
        if not self._fs.exists(path):
            return None
        if self._fs.is_subvolume(path):
            with contextlib.suppress(NotFound):
                return read(path)
        raise AlreadyExists(f"{path.parent.name}/{path.name} holds something this driver did not make")

    def forget_snapshot(self, path: Path) -> None:
        """Removes snapshot metadata a restore copied from its source."""
        self._fs.remove_xattr(path, self.snapshot_xattr)

    def volume_meta(self, path: Path) -> dict[str, Any]:
        meta = self.read(path)
        if meta.get("kind") != "volume":
            raise NotFound(f"volume {path.name} has no volume metadata")
        return meta

    def volume(self, path: Path) -> Volume:
        return as_volume(path.name, self.volume_meta(path), self._fs.subvolume_info(path))

    def snapshot(self, path: Path) -> Snapshot:
        meta = self.read(path, self.snapshot_xattr)
        if meta.get("kind") != "snapshot":
            raise NotFound(f"snapshot {path.name} has no snapshot metadata")
        info = self._fs.subvolume_info(path)
        return Snapshot(
            id=path.name,
            name=meta["name"],
            source_volume_id=meta["source_volume_id"],
            size=meta["size"],
            subvolume_id=info.id,
            created=info.otime,
            tuning=tuning_of(meta),
        )

    def qgroup_at(self, path: Path) -> int:
        """The qgroup that carries the limit of the volume at path: its level-1 qgroup, or its own
        level-0 one when it has none yet (made before level-1 qgroups, or not ours)."""
        try:
            group = group_of(self.read(path))
        except NotFound:
            group = None
        return group or self._fs.subvolume_info(path).id

    def quota_mode(self, root: Path) -> QuotaMode | None:
        """The quota mode recorded on the pool's root, None when none is."""
        try:
            mode = QuotaMode(self.read(root, self.quota_mode_xattr).get("quota_mode"))
        except (NotFound, ValueError):
            return None
        return None if mode is QuotaMode.OFF else mode

    def record_quota_mode(self, root: Path, mode: QuotaMode) -> None:
        self.write(root, {"quota_mode": mode.value}, self.quota_mode_xattr)
