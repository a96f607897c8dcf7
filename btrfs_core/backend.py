"""What the pool needs from btrfs, as one interface: the kernel, or the in-memory fake for unit tests."""

import contextlib
import errno
import os
from pathlib import Path
from typing import Protocol

from btrfs_core import filesystem, mounts, properties, quota, subvolume
from btrfs_core.errors import KernelError
from btrfs_core.models import FsUsage, PoolSpace, QgroupUsage, QuotaMode, QuotaStatus, SubvolumeInfo, Tuning


class Backend(Protocol):
    # Extended attribute that holds an object's metadata. The kernel backend uses the trusted
    # namespace so that a pod, which sees its volume's root directory, can neither read nor forge it.
    metadata_xattr: str

    def check(self) -> str | None: ...
    def read_only(self) -> bool: ...  # the pool is mounted read-only
    # None when the object has no such attribute; a failure to read is raised, never None.
    def read_xattr(self, path: Path, name: str) -> bytes | None: ...
    def write_xattr(self, path: Path, name: str, value: bytes) -> None: ...
    def remove_xattr(self, path: Path, name: str) -> None: ...  # absent is fine
    def list_dir(self, path: Path) -> list[str]: ...
    def scan_dir(self, path: Path) -> list[tuple[str, int]]: ...  # (name, d_ino) of each entry
    def exists(self, path: Path) -> bool: ...  # anything at path, a dangling symlink too
    def make_directory(self, path: Path) -> None: ...  # mode 0700; one that exists is fine
    def remove_entry(self, path: Path) -> None: ...  # a file, symlink or plain directory tree
    def published_targets(self, path: Path) -> list[str]: ...  # where path is bind-mounted
    # qgroup: the level-1 qgroup the new subvolume's qgroup joins in the same transaction.
    def create_subvolume(self, path: Path, qgroup: int | None = None) -> None: ...
    def snapshot(self, source: Path, path: Path, readonly: bool, qgroup: int | None = None) -> None: ...
    def delete_subvolume(self, path: Path) -> None: ...
    def rename(self, source: Path, destination: Path) -> None: ...
    def is_subvolume(self, path: Path) -> bool: ...
    # Where the subvolumes directly nested in the one at path are (at any directory depth), relative.
    def nested_subvolumes(self, path: Path) -> list[str]: ...
    def subvolume_info(self, path: Path) -> SubvolumeInfo: ...
    def set_readonly(self, path: Path, readonly: bool) -> None: ...
    # Makes a subvolume root carry exactly this compression property and nodatacow flag.
    def apply_tuning(self, path: Path, tuning: Tuning) -> None: ...
    def quota_status(self) -> QuotaStatus: ...
    def enable_quota(self, mode: QuotaMode) -> None: ...
    def rescan_quota(self) -> None: ...
    def wait_rescan(self) -> None: ...
    def set_limit(self, qgroupid: int, limit: int | None) -> None: ...
    def usage(self, qgroupid: int) -> QgroupUsage: ...
    # level 0, by subvolume id (those of ids first..last)
    def usage_all(self, first: int = 0, last: int = quota.LEVEL1 - 1) -> dict[int, QgroupUsage]: ...
    def group_usage_all(self) -> dict[int, QgroupUsage]: ...  # level 1 and above
    def create_qgroup(self, qgroupid: int) -> None: ...
    def destroy_qgroup(self, qgroupid: int) -> None: ...
    def assign_qgroup(self, member: int, parent: int, assign: bool) -> None: ...
    def qgroup_relations(self) -> dict[int, set[int]]: ...  # member -> its parent qgroups
    def subvolume_parents(self) -> dict[int, int]: ...  # every subvolume id -> the one holding it
    def exclusive_all(self) -> dict[int, int]: ...  # every qgroup's exclusive bytes
    def fs_usage(self) -> FsUsage: ...
    def space(self) -> PoolSpace: ...
    # The running transaction's id, or the last one's: a change made before is in one no later.
    def generation(self) -> int: ...
    # Commits the running transaction and waits for it: every change before it is on disk; returns
    # the id of the transaction committed. Writes no file data (usage counters wait for the data's
    # own writeback).
    def sync(self) -> int: ...
    # Writes every file's dirty data, then commits (a head start for a commit that must wait for it).
    def write_back(self) -> None: ...


class PlainFiles:
    """The plain file calls of both backends: the fake's subvolumes are directories, its metadata
    extended attributes and its pool a mounted filesystem too."""

    root: Path

    def read_xattr(self, path: Path, name: str) -> bytes | None:
        return filesystem.read_xattr(path, name)

    def write_xattr(self, path: Path, name: str, value: bytes) -> None:
        filesystem.write_xattr(path, name, value)

    def remove_xattr(self, path: Path, name: str) -> None:
        filesystem.remove_xattr(path, name)

    def list_dir(self, path: Path) -> list[str]:
        return filesystem.list_dir(path)

    def scan_dir(self, path: Path) -> list[tuple[str, int]]:
        return filesystem.scan_dir(path)

    def exists(self, path: Path) -> bool:
        return os.path.lexists(path)

    def make_directory(self, path: Path) -> None:
        filesystem.make_directory(path)

    def remove_entry(self, path: Path) -> None:
        filesystem.remove_entry(path)

    def published_targets(self, path: Path) -> list[str]:
        return mounts.published_targets(path)


class KernelBackend(PlainFiles):
    """btrfs through the kernel's ioctls, for the filesystem mounted at root."""

    metadata_xattr = "trusted.btrfs-csi"

    def __init__(self, root: Path) -> None:
        self.root = root

    def check(self) -> str | None:
        return filesystem.check_btrfs_mount(self.root)

    def read_only(self) -> bool:
        return filesystem.read_only(self.root)

    def create_subvolume(self, path: Path, qgroup: int | None = None) -> None:
        subvolume.create(path, qgroup)

    def snapshot(self, source: Path, path: Path, readonly: bool, qgroup: int | None = None) -> None:
        subvolume.snapshot(source, path, readonly, qgroup)

    def delete_subvolume(self, path: Path) -> None:
        subvolume.delete(path)

    def rename(self, source: Path, destination: Path) -> None:
        subvolume.rename(source, destination)

    def is_subvolume(self, path: Path) -> bool:
        return subvolume.is_subvolume(path)

    def nested_subvolumes(self, path: Path) -> list[str]:
        return subvolume.nested_paths(path)

    def subvolume_info(self, path: Path) -> SubvolumeInfo:
        return subvolume.info(path)

    def set_readonly(self, path: Path, readonly: bool) -> None:
        subvolume.set_readonly(path, readonly)

    def apply_tuning(self, path: Path, tuning: Tuning) -> None:
        properties.apply(path, tuning)

    def quota_status(self) -> QuotaStatus:
        return quota.status(self.root)

    def enable_quota(self, mode: QuotaMode) -> None:
        quota.enable(self.root, mode)

    def rescan_quota(self) -> None:
        try:
            quota.rescan(self.root)
        except KernelError as exc:
            if exc.errno != errno.EINPROGRESS:
                raise
            # One is running. A change that marks accounting inconsistent cancels a running rescan,
            # which then ends without making it consistent: wait for it and start anew.
            quota.wait_rescan(self.root)
            with contextlib.suppress(KernelError):  # EINPROGRESS: another caller started one
                quota.rescan(self.root)

    def wait_rescan(self) -> None:
        quota.wait_rescan(self.root)

    def set_limit(self, qgroupid: int, limit: int | None) -> None:
        quota.set_limit(self.root, qgroupid, limit)

    def usage(self, qgroupid: int) -> QgroupUsage:
        return quota.usage(self.root, qgroupid)

    def usage_all(self, first: int = 0, last: int = quota.LEVEL1 - 1) -> dict[int, QgroupUsage]:
        return quota.usage_all(self.root, first, last)

    def exclusive_all(self) -> dict[int, int]:
        return quota.exclusive_all(self.root)

    def group_usage_all(self) -> dict[int, QgroupUsage]:
        return quota.group_usage_all(self.root)

    def create_qgroup(self, qgroupid: int) -> None:
        quota.create_qgroup(self.root, qgroupid)

    def destroy_qgroup(self, qgroupid: int) -> None:
        quota.destroy_qgroup(self.root, qgroupid)

    def assign_qgroup(self, member: int, parent: int, assign: bool) -> None:
        quota.assign(self.root, member, parent, assign)

    def qgroup_relations(self) -> dict[int, set[int]]:
        return quota.relations(self.root)

    def subvolume_parents(self) -> dict[int, int]:
        return subvolume.list_all(self.root)

    def fs_usage(self) -> FsUsage:
        return filesystem.usage(self.root)

    def space(self) -> PoolSpace:
        return filesystem.space(self.root)

    def generation(self) -> int:
        return filesystem.generation(self.root)

    def sync(self) -> int:
        return filesystem.commit(self.root)

    def write_back(self) -> None:
        filesystem.sync(self.root)
