"""Plain values the core returns: subvolumes, quotas, usage, volumes and snapshots."""

import enum
from dataclasses import dataclass, field
from typing import NamedTuple
from uuid import UUID

from btrfs_core.errors import InvalidArgument


class QuotaMode(enum.Enum):
    OFF = "off"
    FULL = "full"  # full qgroups: shared and exclusive accounting
    SIMPLE = "simple"  # squota: extents charged to the subvolume that wrote them


# The quota_mode a pool is configured with: "auto" picks simple quotas when the kernel has them, else full.
QUOTA_MODE_AUTO = "auto"
QUOTA_MODE_SETTINGS = (QUOTA_MODE_AUTO, QuotaMode.SIMPLE.value, QuotaMode.FULL.value)

# Volume metadata keys the kubernetes sidecars pass (--extra-create-metadata): kept on the volume so
# metrics can name the claim without asking the API server.
PVC_NAME_KEY = "csi.storage.k8s.io/pvc/name"
PVC_NAMESPACE_KEY = "csi.storage.k8s.io/pvc/namespace"
PV_NAME_KEY = "csi.storage.k8s.io/pv/name"

# The volume tuning keys of StorageClass parameters and VolumeAttributesClass mutable_parameters.
COMPRESSION_KEY = "compression"
NODATACOW_KEY = "nodatacow"


class Algorithm(enum.Enum):
    NONE = "none"  # never compress, whatever the pool is mounted with
    ZSTD = "zstd"
    LZO = "lzo"
    ZLIB = "zlib"


# The levels each algorithm takes ("zstd:3"); the kernel accepts levels beyond these (zstd:16), so the
# range is checked here.
MAX_LEVEL = {Algorithm.ZSTD: 15, Algorithm.ZLIB: 9}


@dataclass(frozen=True)
class Compression:
    """A value of the btrfs.compression property: an algorithm and, for zstd and zlib, a level."""

    algorithm: Algorithm
    level: int | None = None  # None: the kernel's default level for the algorithm

    def __post_init__(self) -> None:
        top = MAX_LEVEL.get(self.algorithm)
        if self.level is not None and (top is None or not 1 <= self.level <= top):
            raise InvalidArgument(f"compression {self}: {_levels(self.algorithm)}")

    def __str__(self) -> str:
        return self.algorithm.value if self.level is None else f"{self.algorithm.value}:{self.level}"

    @classmethod
    def parse(cls, text: str) -> "Compression":
        """'zstd', 'zstd:1'...'zstd:15', 'lzo', 'zlib', 'zlib:1'...'zlib:9' or 'none'."""
        name, colon, level = text.partition(":")
        try:
            algorithm = Algorithm(name)
        except ValueError:
            raise InvalidArgument(f"compression {text!r} is not one of {COMPRESSION_CHOICES}") from None
        if not colon:
            return cls(algorithm)
        if not (level.isascii() and level.isdigit()):
            raise InvalidArgument(f"compression {text!r}: {_levels(algorithm)}")
        return cls(algorithm, int(level))


COMPRESSION_CHOICES = "none, zstd, zstd:1...zstd:15, lzo, zlib, zlib:1...zlib:9"


def _levels(algorithm: Algorithm) -> str:
    top = MAX_LEVEL.get(algorithm)
    return f"{algorithm.value} takes a level from 1 to {top}" if top else f"{algorithm.value} takes no level"


@dataclass(frozen=True)
class Tuning:
    """How btrfs stores a volume's data, set on its subvolume root and inherited by new files."""

    # The btrfs.compression property; None: none set, the pool's mount options decide.
    compression: Compression | None = None
    # FS_NOCOW_FL: data overwritten in place, without checksums or compression. Fixed at creation.
    nodatacow: bool = False


NO_TUNING = Tuning()


@dataclass(frozen=True)
class TuningRequest:
    """The tuning a CreateVolume asks for; None: not asked (a new volume's default, a clone's source's)."""

    compression: Compression | None = None
    nodatacow: bool | None = None


@dataclass(frozen=True)
class QuotaStatus:
    mode: QuotaMode
    inconsistent: bool  # accounting is off; limits are not reliably enforced
    rescan_running: bool


@dataclass(frozen=True)
class SubvolumeInfo:
    id: int
    name: str
    parent_id: int
    uuid: UUID
    parent_uuid: UUID | None  # the source of a snapshot; None for a plain subvolume
    generation: int
    otime: float  # creation time, seconds since the epoch
    readonly: bool
    received_uuid: UUID | None = None  # a received subvolume: the UUID of the one that was sent


class QgroupUsage(NamedTuple):
    """A named tuple, not a frozen dataclass: a scrape of 10,000 volumes makes 20,000 of them, which
    took 2 µs each as a dataclass and 0.4 µs as this (most of the scrape's quota-tree read)."""

    qgroupid: int  # level 0: the subvolume id
    referenced: int
    exclusive: int
    limit: int | None  # the referenced-bytes limit; None when unlimited


@dataclass(frozen=True)
class FsUsage:
    size: int
    used: int
    free: int  # what a new volume can still get


@dataclass(frozen=True)
class BlockGroups:
    """The block groups of one kind (data or metadata), as BTRFS_IOC_SPACE_INFO reports them."""

    total: int  # logical bytes the block groups hold
    used: int  # logical bytes in use
    copies: float  # raw device bytes per logical byte: 1 single, 2 DUP or RAID1, ...


@dataclass(frozen=True)
class PoolSpace:
    """Where the filesystem's bytes are: what data can still use, and what metadata needs."""

    data: BlockGroups
    metadata: BlockGroups
    global_reserve: int  # metadata btrfs keeps for itself so that deletes can always proceed
    unallocated: int  # raw device bytes in no block group yet, for whichever kind needs them
    mixed: bool  # data and metadata share block groups (small filesystems made with --mixed)


class SourceKind(enum.Enum):
    SNAPSHOT = "snapshot"
    VOLUME = "volume"


@dataclass(frozen=True)
class Source:
    kind: SourceKind
    id: str


@dataclass(frozen=True)
class Volume:
    id: str
    name: str  # the CSI name it was created for
    capacity: int  # the qgroup limit on referenced bytes
    source: Source | None
    subvolume_id: int
    # The qgroup that carries the limit and whose usage is the volume's: a level-1 qgroup holding the
    # subvolume's own and every nested one's (the level-0 one on a pool not migrated yet).
    qgroup: int
    created: float
    metadata: dict[str, str] = field(default_factory=dict)  # PVC name/namespace, PV name
    tuning: Tuning = NO_TUNING


@dataclass(frozen=True)
class Snapshot:
    id: str
    name: str
    source_volume_id: str
    size: int  # the source volume's capacity when taken: the least a restore needs
    subvolume_id: int
    created: float
    tuning: Tuning = NO_TUNING  # the source's when taken: what a restore keeps unless it asks otherwise


@dataclass(frozen=True)
class VolumeHealth:
    abnormal: bool
    message: str


@dataclass(frozen=True)
class QuotaRepairs:
    """What one pass over the volumes' quotas found wrong and put right."""

    migrated: int = 0  # volumes of the old shape (limit on 0/N) given their level-1 qgroup
    qgroups_restored: int = 0  # level-1 qgroups recreated (gone after quotas were turned off)
    limits_restored: int = 0  # limits that differed from the capacity in the volume's metadata
    orphans_removed: int = 0  # level-1 qgroups of this driver that no volume names any more


@dataclass(frozen=True)
class NestedScan:
    """One scan of the subvolumes at or below volumes: how many were in the wrong qgroup, and fixed."""

    out_of_place: int
    repaired: int
