"""An in-memory stand-in for btrfs, for unit tests that need no root: subvolumes are plain
directories on any filesystem, qgroups a dictionary. It keeps the kernel's contract as the pool
sees it (the contract suite runs the same tests on both) but enforces no limit on writes.
"""

import errno
import os
import shutil
import time
import uuid
from pathlib import Path

from btrfs_core.errors import InvalidArgument, KernelError, NotFound
from btrfs_core.models import (
    BlockGroups,
    FsUsage,
    PoolSpace,
    QgroupUsage,
    QuotaMode,
    QuotaStatus,
    SubvolumeInfo,
)

_ID_XATTR = "user.fake-btrfs.id"


class FakeBackend:
    metadata_xattr = "user.btrfs-csi"

    def __init__(self, root: Path, size: int = 1 << 30) -> None:
        self.root = root
        self.size = size
        self.mode = QuotaMode.OFF
        self.inconsistent = False
        self.syncs = 0
        self._next_id = 256
        self._info: dict[int, SubvolumeInfo] = {}
        self._limits: dict[int, int | None] = {}

    def check(self) -> str | None:
        return None if self.root.is_dir() else f"{self.root} is not a directory"

    def _register(self, path: Path, parent_uuid: uuid.UUID | None, readonly: bool) -> None:
        subvolume_id, self._next_id = self._next_id, self._next_id + 1
        os.setxattr(path, _ID_XATTR, str(subvolume_id).encode())
        self._info[subvolume_id] = SubvolumeInfo(
            subvolume_id, path.name, 5, uuid.uuid4(), parent_uuid, 1, time.time(), readonly
        )
        self._limits[subvolume_id] = None

    def _id(self, path: Path) -> int:
        try:
            subvolume_id = int(os.getxattr(path, _ID_XATTR))
        except OSError:
            raise NotFound(f"{path} is not a subvolume") from None
        if subvolume_id not in self._info:
            raise NotFound(f"{path} is not a subvolume")
        return subvolume_id

    def create_subvolume(self, path: Path) -> None:
        path.mkdir()
        self._register(path, None, readonly=False)

    def snapshot(self, source: Path, path: Path, readonly: bool) -> None:
        parent = self._info[self._id(source)]
        nested = {source / relative for relative in self.nested_subvolumes(source)}
        # Copies the root's xattrs, as a snapshot does; not recursive: a nested subvolume becomes an
        # empty directory.
        shutil.copytree(
            source, path, symlinks=True, ignore=lambda d, names: {n for n in names if Path(d, n) in nested}
        )
        for relative in nested:
            (path / relative.relative_to(source)).mkdir()
        self._register(path, parent.uuid, readonly)

    def delete_subvolume(self, path: Path) -> None:
        held = [self._id(path / relative) for relative in self._all_nested(path)]
        subvolume_id = self._id(path)
        shutil.rmtree(path)
        for gone in (*held, subvolume_id):
            del self._info[gone], self._limits[gone]

    def rename(self, source: Path, destination: Path) -> None:
        if self._info[self._id(source)].readonly and source.parent != destination.parent:
            raise KernelError("rename", errno.EROFS, f"{source}: a read-only subvolume cannot move")
        os.rename(source, destination)

    def nested_subvolumes(self, path: Path) -> list[str]:
        found = []
        for directory, subdirectories, _files in os.walk(path):
            for name in list(subdirectories):
                if self.is_subvolume(Path(directory, name)):
                    found.append(os.path.relpath(os.path.join(directory, name), path))
                    subdirectories.remove(name)  # what it holds is not directly nested here
        return sorted(found)

    def _all_nested(self, path: Path) -> list[str]:
        return [
            os.path.relpath(os.path.join(directory, name), path)
            for directory, subdirectories, _files in os.walk(path)
            for name in subdirectories
            if self.is_subvolume(Path(directory, name))
        ]

    def is_subvolume(self, path: Path) -> bool:
        try:
            self._id(path)
        except NotFound:
            return False
        return path.is_dir() and not path.is_symlink()

    def subvolume_info(self, path: Path) -> SubvolumeInfo:
        return self._info[self._id(path)]

    def set_readonly(self, path: Path, readonly: bool) -> None:
        info = self._info[self._id(path)]
        self._info[info.id] = SubvolumeInfo(
            info.id,
            info.name,
            info.parent_id,
            info.uuid,
            info.parent_uuid,
            info.generation,
            info.otime,
            readonly,
        )

    def quota_status(self) -> QuotaStatus:
        return QuotaStatus(self.mode, self.inconsistent, rescan_running=False)

    def enable_quota(self, mode: QuotaMode) -> None:
        if mode is QuotaMode.OFF:
            raise InvalidArgument("quota enable: off is not a quota mode")
        self.mode = mode

    def rescan_quota(self) -> None:
        self.inconsistent = False

    def set_limit(self, subvolume_id: int, limit: int | None) -> None:
        if subvolume_id not in self._limits:
            raise NotFound(f"qgroup 0/{subvolume_id} does not exist")
        self._limits[subvolume_id] = limit

    def _bytes(self, subvolume_id: int) -> int:
        for path in (self.root / "volumes", self.root / "snapshots", self.root / ".staging"):
            for entry in path.iterdir() if path.is_dir() else ():
                if self.is_subvolume(entry) and self._id(entry) == subvolume_id:
                    return sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        return 0

    def usage(self, subvolume_id: int) -> QgroupUsage:
        if self.mode is QuotaMode.OFF or subvolume_id not in self._limits:
            raise NotFound(f"qgroup 0/{subvolume_id}: no qgroup")
        used = self._bytes(subvolume_id)
        return QgroupUsage(subvolume_id, used, used, self._limits[subvolume_id])

    def usage_all(self) -> dict[int, QgroupUsage]:
        if self.mode is QuotaMode.OFF:
            return {}
        return {subvolume_id: self.usage(subvolume_id) for subvolume_id in self._limits}

    def exclusive_all(self) -> dict[int, int]:
        return {subvolume_id: usage.exclusive for subvolume_id, usage in self.usage_all().items()}

    def remove_stale_qgroups(self) -> list[int]:
        return []  # deleting a fake subvolume drops its qgroup, as kernels since 6.11 do

    def fs_usage(self) -> FsUsage:
        used = sum(self._bytes(subvolume_id) for subvolume_id in self._info)
        return FsUsage(self.size, used, self.size - used)

    def space(self) -> PoolSpace:
        # One mixed block group as big as the fake's size: no device space left to allocate.
        groups = BlockGroups(self.size, self.fs_usage().used, copies=1)
        return PoolSpace(groups, groups, global_reserve=0, unallocated=0, mixed=True)

    def sync(self) -> None:
        self.syncs += 1
