"""Requests into domain values: every refusal names the field, and no value reaches the core unchecked.

Missing or malformed fields are INVALID_ARGUMENT (CSI error scheme); capacity the driver cannot honour is
OUT_OF_RANGE; a page token it did not issue is ABORTED. IDs are checked by the core's own rule (the one
that guards every path it builds), so the two layers cannot disagree about what an ID looks like.
"""

import bisect
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from btrfs_core import models, mounts
from btrfs_core.errors import InvalidArgument
from btrfs_core.ids import check_id
from btrfs_core.models import Source, SourceKind
from btrfs_core.text import shortened
from csi.errors import aborted, invalid, out_of_range, resource_exhausted
from csi.pb import csi_pb2

T = TypeVar("T")

MAX_STRING_BYTES = 128  # the CSI size limit for strings
MAX_MAP_BYTES = 4096  # ... and for a map<string, string>
MAX_PATH_BYTES = 4096  # paths override the string limit; PATH_MAX is the real bound

# Keys the kubernetes sidecars add to parameters (--extra-create-metadata): accepted, never refused.
SIDECAR_PREFIX = "csi.storage.k8s.io/"
# Of those, the ones kept on the volume so metrics can name the claim without asking the API server.
VOLUME_METADATA_KEYS = (models.PVC_NAME_KEY, models.PVC_NAMESPACE_KEY, models.PV_NAME_KEY)
# Driver parameters of a StorageClass, of a VolumeAttributesClass (mutable_parameters: what
# ControllerModifyVolume may change) and of a VolumeSnapshotClass (none). An unknown key is a typo to
# report, not an option to ignore.
VOLUME_PARAMETERS = frozenset({models.COMPRESSION_KEY, models.NODATACOW_KEY})
MUTABLE_PARAMETERS = frozenset({models.COMPRESSION_KEY})
SNAPSHOT_PARAMETERS: frozenset[str] = frozenset()
BOOLEANS = {"true": True, "false": False}

# CSI names may hold any Unicode except these control characters (CreateVolumeRequest.name).
_BANNED_NAME_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")

Mode = csi_pb2.VolumeCapability.AccessMode.Mode
SINGLE_NODE_MODES = frozenset(
    {
        Mode.SINGLE_NODE_WRITER,
        Mode.SINGLE_NODE_READER_ONLY,
        Mode.SINGLE_NODE_SINGLE_WRITER,
        Mode.SINGLE_NODE_MULTI_WRITER,
    }
)
# Modes the second-publish table lets a volume be published at several targets of this node.
MULTI_TARGET_MODES = frozenset({Mode.SINGLE_NODE_MULTI_WRITER})
FS_TYPES = frozenset({"", "btrfs"})  # a bind mount of a subvolume is btrfs, whatever else is asked
READONLY_FLAG = "ro"


def shown(value: str, limit: int = 64) -> str:
    """A value for an error message: quoted, control characters escaped, long values cut."""
    return repr(shortened(value, limit))


def _utf8_len(value: str) -> int:
    return len(value.encode("utf-8", "surrogatepass"))


# identifiers and names


def required_id(value: str, field: str, kind: str = "volume") -> str:
    """A volume or snapshot ID from a request, refused before it can become a path."""
    if not value:
        raise invalid(f"{field} is required")
    try:
        return check_id(value, kind)
    except InvalidArgument:
        raise invalid(f"{field} {shown(value)} is not a {kind} ID this driver issues") from None


def required_name(value: str, field: str = "name") -> str:
    if not value:
        raise invalid(f"{field} is required")
    if _utf8_len(value) > MAX_STRING_BYTES:
        raise invalid(f"{field} is longer than {MAX_STRING_BYTES} bytes")
    if _BANNED_NAME_CHARS.search(value):
        raise invalid(f"{field} {shown(value)} contains a control character")
    return value


def required_path(value: str, field: str) -> str:
    """An absolute path on this node; never resolved here (the mount code resolves and checks it)."""
    path = well_formed_path(value, field)
    if not os.path.isabs(path):
        raise invalid(f"{field} {shown(value)} is not an absolute path")
    return path


def well_formed_path(value: str, field: str) -> str:
    """A path without NUL, '..' or excess length. Absolute or not is the caller's question: a relative
    volume_path is a place where no volume is published (NOT_FOUND), not a malformed request."""
    if not value:
        raise invalid(f"{field} is required")
    if "\0" in value:
        raise invalid(f"{field} contains a NUL byte")
    if _utf8_len(value) > MAX_PATH_BYTES:
        raise invalid(f"{field} is longer than {MAX_PATH_BYTES} bytes")
    if ".." in value.split("/"):
        raise invalid(f"{field} {shown(value)} has a '..' component")
    return value


# capacity


def _range_bounds(capacity_range: csi_pb2.CapacityRange, field: str) -> tuple[int, int]:
    required, limit = capacity_range.required_bytes, capacity_range.limit_bytes
    if required < 0 or limit < 0:
        raise out_of_range(f"{field}: required_bytes and limit_bytes must not be negative")
    if required and limit and limit < required:
        raise out_of_range(f"{field}: limit_bytes {limit} is below required_bytes {required}")
    return required, limit


def capacity_bounds(
    capacity_range: csi_pb2.CapacityRange | None, field: str = "capacity_range"
) -> tuple[int, int]:
    """(required_bytes, limit_bytes) of a CreateVolume range, 0 for unset; the core picks the capacity."""
    return _range_bounds(capacity_range, field) if capacity_range is not None else (0, 0)


def expansion_capacity(
    capacity_range: csi_pb2.CapacityRange | None, field: str = "capacity_range"
) -> tuple[int, int | None] | None:
    """The capacity an expansion asks for and its limit, or None when it leaves the choice to the plugin."""
    if capacity_range is None:
        return None
    required, limit = _range_bounds(capacity_range, field)
    if not required and not limit:
        return None
    return required or limit, limit or None


# capabilities


@dataclass(frozen=True)
class Capability:
    """One VolumeCapability, well-formed; `unsupported()` tells whether this driver can serve it."""

    mode: "csi_pb2.VolumeCapability.AccessMode.Mode.ValueType"
    block: bool
    fs_type: str
    mount_flags: tuple[str, ...]
    mount_group: str

    @property
    def readonly(self) -> bool:
        return self.mode == Mode.SINGLE_NODE_READER_ONLY or READONLY_FLAG in self.mount_flags

    @property
    def options(self) -> tuple[str, ...]:
        """Per-mount options for the bind mount ("ro" becomes the read-only flag instead)."""
        return tuple(flag for flag in self.mount_flags if flag not in (READONLY_FLAG, "rw"))

    @property
    def exclusive(self) -> bool:
        """Published at one target of this node at a time (spec.md, second NodePublishVolume table)."""
        return self.mode not in MULTI_TARGET_MODES

    def unsupported(self) -> str | None:
        if self.block:
            return "block access is not supported: volumes are directories (mount access only)"
        if self.mode not in SINGLE_NODE_MODES:
            return f"access mode {Mode.Name(self.mode)} is not supported: volumes live on one node"
        if self.fs_type not in FS_TYPES:
            return f"fs_type {shown(self.fs_type)} is not supported: volumes are btrfs subvolumes"
        if self.mount_group:
            return "volume_mount_group is not supported (no VOLUME_MOUNT_GROUP capability)"
        for i, flag in enumerate(self.mount_flags):
            if flag not in mounts.MOUNT_OPTIONS and flag not in (READONLY_FLAG, "rw"):
                # Not echoed: mount flags may carry sensitive values (spec: MountVolume.mount_flags).
                allowed = ", ".join(sorted([*mounts.MOUNT_OPTIONS, READONLY_FLAG, "rw"]))
                return f"mount_flags[{i}] is not a supported flag (supported: {allowed})"
        return None


def capability(cap: csi_pb2.VolumeCapability, field: str) -> Capability:
    """Refuses a malformed capability (INVALID_ARGUMENT); an unsupported one is returned as such."""
    access_type = cap.WhichOneof("access_type")
    if access_type is None:
        raise invalid(f"{field}.access_type: one of mount or block is required")
    if not cap.HasField("access_mode") or cap.access_mode.mode == Mode.UNKNOWN:
        raise invalid(f"{field}.access_mode.mode is required")
    if cap.access_mode.mode not in Mode.values():
        raise invalid(f"{field}.access_mode.mode {cap.access_mode.mode} is not a known access mode")
    flags = tuple(cap.mount.mount_flags)
    if sum(_utf8_len(flag) for flag in flags) > MAX_MAP_BYTES:
        raise invalid(f"{field}.mount.mount_flags exceed {MAX_MAP_BYTES} bytes")
    return Capability(
        mode=cap.access_mode.mode,
        block=access_type == "block",
        fs_type=cap.mount.fs_type,
        mount_flags=flags,
        mount_group=cap.mount.volume_mount_group,
    )


def capabilities(
    caps: Sequence[csi_pb2.VolumeCapability], field: str = "volume_capabilities"
) -> list[Capability]:
    if not caps:
        raise invalid(f"{field} is required (at least one)")
    return [capability(cap, f"{field}[{i}]") for i, cap in enumerate(caps)]


def supported_capabilities(
    caps: Sequence[csi_pb2.VolumeCapability], field: str = "volume_capabilities"
) -> list[Capability]:
    """All capabilities, each one this driver can serve; the first it cannot is INVALID_ARGUMENT."""
    parsed = capabilities(caps, field)
    for i, cap in enumerate(parsed):
        reason = cap.unsupported()
        if reason:
            raise invalid(f"{field}[{i}]: {reason}")
    return parsed


def unsupported_reason(caps: Sequence[Capability]) -> str | None:
    for cap in caps:
        reason = cap.unsupported()
        if reason:
            return reason
    return None


# parameters


def _map_size(values: Mapping[str, str]) -> int:
    return sum(_utf8_len(key) + _utf8_len(value) for key, value in values.items())


def parameters(values: Mapping[str, str], known: frozenset[str], field: str = "parameters") -> dict[str, str]:
    """Refuses unknown keys (sidecar-added ones excepted) and oversized maps; returns the map."""
    if _map_size(values) > MAX_MAP_BYTES:
        raise invalid(f"{field} exceed {MAX_MAP_BYTES} bytes")
    for key in sorted(values):
        if key not in known and not key.startswith(SIDECAR_PREFIX):
            takes = ", ".join(sorted(known)) or "none of its own"
            raise invalid(f"{field}: unknown key {shown(key)}; this driver takes {takes}")
    return dict(values)


def mutable_parameters(values: Mapping[str, str], field: str = "mutable_parameters") -> dict[str, str]:
    """parameters() of a VolumeAttributesClass: what ControllerModifyVolume may change."""
    if models.NODATACOW_KEY in values:
        raise invalid(
            f"{field}.{models.NODATACOW_KEY} cannot change after creation (files already written keep "
            "their copy-on-write state): set it in the StorageClass parameters"
        )
    return parameters(values, MUTABLE_PARAMETERS, field)


def compression(values: Mapping[str, str], field: str) -> models.Compression | None:
    """The compression a map names, None when it names none."""
    text = values.get(models.COMPRESSION_KEY)
    if text is None:
        return None
    try:
        return models.Compression.parse(text)
    except InvalidArgument as exc:
        raise invalid(f"{field}.{models.COMPRESSION_KEY}: {exc}") from None


def tuning(params: Mapping[str, str], mutable: Mapping[str, str]) -> models.TuningRequest:
    """The tuning a CreateVolume asks for: StorageClass parameters, and a VolumeAttributesClass's
    mutable_parameters over them (the class a claim can move to later is the one that stays true)."""
    text = params.get(models.NODATACOW_KEY)
    if text is not None and text not in BOOLEANS:
        raise invalid(f'parameters.{models.NODATACOW_KEY} {shown(text)} is not "true" or "false"')
    nodatacow = None if text is None else BOOLEANS[text]
    in_class, in_storage_class = compression(mutable, "mutable_parameters"), compression(params, "parameters")
    asked = in_class or in_storage_class
    if nodatacow and asked is not None and asked.algorithm is not models.Algorithm.NONE:
        raise invalid(
            f"parameters.{models.NODATACOW_KEY} true cannot go with {models.COMPRESSION_KEY} {asked}: data "
            "written in place is never compressed (use compression none, or nodatacow false)"
        )
    return models.TuningRequest(asked, nodatacow)


def volume_metadata(values: Mapping[str, str]) -> dict[str, str]:
    """The claim and volume names the provisioner passed, to keep on the volume."""
    return {key: values[key] for key in VOLUME_METADATA_KEYS if values.get(key)}


# content source


def content_source(source: csi_pb2.VolumeContentSource, field: str = "volume_content_source") -> Source:
    kind = source.WhichOneof("type")
    if kind == "snapshot":
        snapshot_id = required_id(source.snapshot.snapshot_id, f"{field}.snapshot.snapshot_id", "snapshot")
        return Source(SourceKind.SNAPSHOT, snapshot_id)
    if kind == "volume":
        return Source(SourceKind.VOLUME, required_id(source.volume.volume_id, f"{field}.volume.volume_id"))
    raise invalid(f"{field}: one of snapshot or volume is required")


# topology


def check_accessible(
    requirement: csi_pb2.TopologyRequirement | None, topology: Mapping[str, str], field: str
) -> None:
    """Refuses with RESOURCE_EXHAUSTED a requirement that names topologies, none of them this node.

    Volumes of this driver exist only on the node that serves the call, so the one topology it can
    provision in is its own; requisite and preferred are both acceptable places to find it.
    """
    if requirement is None:
        return
    offered = [*requirement.requisite, *requirement.preferred]
    if not offered:
        raise invalid(f"{field}: requisite or preferred is required when the requirement is given")
    for candidate in offered:
        if all(candidate.segments.get(key) == value for key, value in topology.items()):
            return
    raise resource_exhausted(f"{field}: none of the requested topologies is this node's, {dict(topology)}")


def topology_matches(requested: csi_pb2.Topology | None, topology: Mapping[str, str]) -> bool:
    """Whether a topology (e.g. GetCapacity's accessible_topology) names this node; unset means any."""
    if requested is None or not requested.segments:
        return True
    return all(requested.segments.get(key) == value for key, value in topology.items()) and all(
        key in topology for key in requested.segments
    )


# pagination

TOKEN_PREFIX = "after:"  # the token is the last ID handed out: stable across deletes, simple to check


def max_entries(value: int, field: str = "max_entries") -> int:
    if value < 0:
        raise invalid(f"{field} must not be negative")
    return value


def page_token(last_id: str) -> str:
    return TOKEN_PREFIX + last_id


def parse_page_token(token: str, kind: str) -> str | None:
    """The ID a page starts after, or None for the first page; a token not issued here is ABORTED."""
    if not token:
        return None
    last_id = token[len(TOKEN_PREFIX) :] if token.startswith(TOKEN_PREFIX) else ""
    try:
        return check_id(last_id, kind)
    except InvalidArgument:
        raise aborted(f"starting_token {shown(token)} was not issued by this driver; start over") from None


def paginate(
    items: Sequence[T], key: Callable[[T], str], limit: int, after: str | None
) -> tuple[list[T], str]:
    """One page of the items after ID `after` (from parse_page_token), and the next token ("" at the end).

    Paging resumes after the last ID handed out, so entries created or deleted meanwhile shift no
    page; the CO is told to expect neither a consistent nor a duplicate-free view anyway.
    """
    items = sorted(items, key=key)
    keys = [key(item) for item in items]
    start = bisect.bisect_right(keys, after) if after is not None else 0
    end = len(items) if not limit else min(len(items), start + limit)
    page = list(items[start:end])
    next_token = page_token(keys[end - 1]) if end < len(items) and page else ""
    return page, next_token
