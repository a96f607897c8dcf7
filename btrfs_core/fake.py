"""An in-memory stand-in for btrfs, for unit tests that need no root: subvolumes are plain
directories on any filesystem, qgroups a dictionary. It keeps the kernel's contract as the pool
sees it (the contract suite runs the same tests on both) but enforces no limit on writes.
"""

import errno
import functools
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from btrfs_core.backend import PlainFiles
from btrfs_core.errors import AlreadyExists, InUse, InvalidArgument, KernelError, NotFound, ReadOnly
from btrfs_core.models import (
    BlockGroups,
    FsUsage,
    PoolSpace,
    QgroupUsage,
    QuotaMode,
    QuotaStatus,
    SubvolumeInfo,
    Tuning,
)

C = TypeVar("C", bound=type)
_ID_XATTR = "user.fake-btrfs.id"
_LEVEL1 = 1 << 48
_TOP_LEVEL = 5


def _one_call_at_a_time(cls: C) -> C:
    """The kernel takes concurrent calls (the pool makes them: it holds its lock around no kernel
    call); the fake's dictionaries do not: each of its own methods runs under one lock."""
    for name, method in list(vars(cls).items()):
        if callable(method) and not name.startswith("_"):
            setattr(cls, name, _locked(method))
    return cls


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: "FakeBackend", *args: Any, **kwargs: Any) -> Any:
        with self._calls:
            return method(self, *args, **kwargs)

    return call


@_one_call_at_a_time
class FakeBackend(PlainFiles):
    metadata_xattr = "user.btrfs-csi"

    def __init__(self, root: Path, size: int = 1 << 30) -> None:
        self._calls = threading.RLock()
        self.root = root
        self.size = size
        self.mode = QuotaMode.OFF
        self.inconsistent = False
        self.readonly = False  # as if the filesystem were remounted read-only
        self.syncs = 0
        self._next_id = 256
        self._info: dict[int, SubvolumeInfo] = {}
        self._limits: dict[int, int | None] = {}  # level-0 qgroups, by subvolume id
        self._groups: dict[int, int | None] = {}  # qgroups of level 1 and above, with their limits
        self._parents: dict[int, set[int]] = {}  # qgroup -> the qgroups it is a member of

    def check(self) -> str | None:
        return None if self.root.is_dir() else f"{self.root} is not a directory"

    def read_only(self) -> bool:
        return self.readonly

    def _register(
        self, path: Path, parent_uuid: uuid.UUID | None, readonly: bool, qgroup: int | None
    ) -> None:
        subvolume_id, self._next_id = self._next_id, self._next_id + 1
        os.setxattr(path, _ID_XATTR, str(subvolume_id).encode())
        holder = self._holder(path.parent)
        self._info[subvolume_id] = SubvolumeInfo(
            subvolume_id, path.name, holder, uuid.uuid4(), parent_uuid, 1, time.time(), readonly
        )
        self._limits[subvolume_id] = None
        inherited = self._parents.get(holder, set())
        if qgroup is not None:
            self._parents[subvolume_id] = {qgroup}
        elif self.mode is QuotaMode.SIMPLE and len(inherited) == 1:
            # Simple quotas' auto-inherit, for subvolumes and snapshots alike: the one level-1 qgroup
            # of the subvolume that holds the new one (measured on 6.18).
            self._parents[subvolume_id] = set(inherited)

    def _holder(self, directory: Path) -> int:
        """The subvolume a directory belongs to: the nearest subvolume above it, else the top level."""
        for candidate in (directory, *directory.parents):
            if candidate == self.root:
                break
            if self.is_subvolume(candidate):
                return self._id(candidate)
        return _TOP_LEVEL

    def _check_quota(self, operation: str) -> None:
        if self.mode is QuotaMode.OFF:
            raise KernelError(operation, errno.ENOTCONN, "quotas are off")

    def _id(self, path: Path) -> int:
        try:
            subvolume_id = int(os.getxattr(path, _ID_XATTR))
        except OSError:
            raise NotFound(f"{path} is not a subvolume") from None
        if subvolume_id not in self._info:
            raise NotFound(f"{path} is not a subvolume")
        return subvolume_id

    def create_subvolume(self, path: Path, qgroup: int | None = None) -> None:
        if qgroup is not None and qgroup not in self._groups:
            raise NotFound(f"qgroup {qgroup}: no such qgroup")
        path.mkdir()
        self._register(path, None, readonly=False, qgroup=qgroup)

    def snapshot(self, source: Path, path: Path, readonly: bool, qgroup: int | None = None) -> None:
        parent = self._info[self._id(source)]
        if qgroup is not None and qgroup not in self._groups:
            raise NotFound(f"qgroup {qgroup}: no such qgroup")
        nested = {source / relative for relative in self.nested_subvolumes(source)}
        # Copies the root's xattrs, as a snapshot does; not recursive: a nested subvolume becomes an
        # empty directory.
        shutil.copytree(
            source, path, symlinks=True, ignore=lambda d, names: {n for n in names if Path(d, n) in nested}
        )
        for relative in nested:
            (path / relative.relative_to(source)).mkdir()
        self._register(path, parent.uuid, readonly, qgroup=qgroup)

    def delete_subvolume(self, path: Path) -> None:
        held = [self._id(path / relative) for relative in self._all_nested(path)]
        subvolume_id = self._id(path)
        shutil.rmtree(path)
        for gone in (*held, subvolume_id):
            del self._info[gone], self._limits[gone]
            self._parents.pop(gone, None)  # the kernel drops a deleted subvolume's qgroup (6.11+)

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

    def apply_tuning(self, path: Path, tuning: Tuning) -> None:
        self._id(path)  # the fake stores data as written: there is nothing to compress or copy

    def quota_status(self) -> QuotaStatus:
        return QuotaStatus(self.mode, self.inconsistent, rescan_running=False)

    def enable_quota(self, mode: QuotaMode) -> None:
        if mode is QuotaMode.OFF:
            raise InvalidArgument("quota enable: off is not a quota mode")
        self.mode = mode

    def disable_quota(self) -> None:
        """What `btrfs quota disable` does: every qgroup, limit and relation is gone."""
        self.mode = QuotaMode.OFF
        self._limits = dict.fromkeys(self._limits)
        self._groups.clear()
        self._parents.clear()

    def rescan_quota(self) -> None:
        self.inconsistent = False

    def wait_rescan(self) -> None:
        pass  # a fake rescan ends as it starts

    def set_limit(self, qgroupid: int, limit: int | None) -> None:
        table = self._groups if qgroupid >= _LEVEL1 else self._limits
        if qgroupid not in table:
            raise NotFound(f"qgroup {qgroupid} does not exist")
        table[qgroupid] = limit

    def create_qgroup(self, qgroupid: int) -> None:
        if self.readonly:  # the kernel asks for write access to the mount first
            raise ReadOnly("qgroup create", errno.EROFS, f"{self.root}: Read-only file system")
        self._check_quota("qgroup create")
        if qgroupid < _LEVEL1:
            raise InvalidArgument(f"qgroup create: {qgroupid} is a level-0 qgroup")
        if qgroupid in self._groups:
            raise AlreadyExists(f"qgroup create: qgroup {qgroupid} exists")
        self._groups[qgroupid] = None

    def destroy_qgroup(self, qgroupid: int) -> None:
        self._check_quota("qgroup destroy")
        if qgroupid in self._limits:  # deleting a subvolume drops its qgroup, as kernels since 6.11 do
            raise InUse(f"qgroup destroy: subvolume {qgroupid} exists")
        if qgroupid not in self._groups:
            raise NotFound(f"qgroup destroy: qgroup {qgroupid} does not exist")
        if any(qgroupid in parents for parents in self._parents.values()):
            raise InUse(f"qgroup destroy: qgroup {qgroupid} has members")
        del self._groups[qgroupid]
        self._parents.pop(qgroupid, None)

    def assign_qgroup(self, member: int, parent: int, assign: bool) -> None:
        self._check_quota("qgroup assign")
        if parent not in self._groups or (member not in self._limits and member not in self._groups):
            raise NotFound(f"qgroup assign: {member} or {parent} does not exist")
        parents = self._parents.setdefault(member, set())
        if assign == (parent in parents):
            if assign:
                raise AlreadyExists(f"qgroup assign: {member} is a member of {parent} already")
            raise NotFound(f"qgroup remove: {member} is not a member of {parent}")
        if assign:
            parents.add(parent)
        else:
            parents.discard(parent)
        if self.mode is QuotaMode.FULL:
            self.inconsistent = True  # the kernel's quick update rarely applies to volumes with data

    def qgroup_relations(self) -> dict[int, set[int]]:
        return {member: set(parents) for member, parents in self._parents.items() if parents}

    def subvolume_parents(self) -> dict[int, int]:
        return {subvolume_id: info.parent_id for subvolume_id, info in self._info.items()}

    def _bytes(self, subvolume_id: int) -> int:
        for path in (self.root / "volumes", self.root / "snapshots", self.root / ".staging"):
            for entry in path.iterdir() if path.is_dir() else ():
                if self.is_subvolume(entry) and self._id(entry) == subvolume_id:
                    return sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
        return 0

    def usage(self, qgroupid: int) -> QgroupUsage:
        if self.mode is QuotaMode.OFF or (qgroupid not in self._limits and qgroupid not in self._groups):
            raise NotFound(f"qgroup {qgroupid}: no qgroup")
        if qgroupid in self._groups:
            used = sum(self._bytes(m) for m, parents in self._parents.items() if qgroupid in parents)
            return QgroupUsage(qgroupid, used, used, self._groups[qgroupid])
        used = self._bytes(qgroupid)
        return QgroupUsage(qgroupid, used, used, self._limits[qgroupid])

    def usage_all(self, first: int = 0, last: int = _LEVEL1 - 1) -> dict[int, QgroupUsage]:
        if self.mode is QuotaMode.OFF:
            return {}
        wanted = [subvolume_id for subvolume_id in self._limits if first <= subvolume_id <= last]
        return {subvolume_id: self.usage(subvolume_id) for subvolume_id in wanted}

    def exclusive_all(self) -> dict[int, int]:
        every = {**self.usage_all(), **self.group_usage_all()}
        return {qgroupid: usage.exclusive for qgroupid, usage in every.items()}

    def group_usage_all(self) -> dict[int, QgroupUsage]:
        if self.mode is QuotaMode.OFF:
            return {}
        return {qgroupid: self.usage(qgroupid) for qgroupid in self._groups}

    def fs_usage(self) -> FsUsage:
        used = sum(self._bytes(subvolume_id) for subvolume_id in self._info)
        return FsUsage(self.size, used, self.size - used)

    def space(self) -> PoolSpace:
        # One mixed block group as big as the fake's size: no device space left to allocate.
        groups = BlockGroups(self.size, self.fs_usage().used, copies=1)
        return PoolSpace(groups, groups, global_reserve=0, unallocated=0, mixed=True)

    def generation(self) -> int:
        return self.syncs + 1  # no transactions: something may always have changed since the last sync

    def sync(self) -> int:
        self.syncs += 1
        return self.syncs

    def write_back(self) -> None:
        pass  # no transactions: nothing for a later commit to wait for
