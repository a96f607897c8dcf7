"""What the parts of one pool share: its root, backend, metadata store, lock and group commit."""

import threading
from dataclasses import dataclass
from pathlib import Path

from btrfs_core.backend import Backend
from btrfs_core.commit import GroupCommit
from btrfs_core.metadata import MetadataStore


@dataclass(frozen=True)
class PoolShared:
    root: Path
    fs: Backend
    meta: MetadataStore
    lock: threading.RLock  # guards existence checks, capacity accounting, renames, the qgroup index
    commit: GroupCommit
