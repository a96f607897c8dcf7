"""The `btrfs` CLI as a test oracle, and helpers for the kernel tests of btrfs_core.

Everything here reads the filesystem some other way than btrfs_core does (the btrfs-progs CLI, sysfs,
the raw superblock, a copy of the disk image), so that the tests compare two independent readings.
"""

import contextlib
import dataclasses
import datetime
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from btrfs_core import filesystem, ioctl, quota, subvolume, trees
from btrfs_core.backend import KernelBackend
from btrfs_core.models import QuotaMode
from tests.support import eventually

# Subvolumes deleted but not yet dropped by the cleaner: ORPHAN_OBJECTID (-5) items in the root tree.
ORPHAN_OBJECTID = ioctl.U64_MAX - 4
ORPHAN_ITEM_KEY = 48


def cli(*args: str, check: bool = True) -> str:
    """Runs a command and returns its stdout; a failure shows the command's stderr."""
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@dataclasses.dataclass(frozen=True)
class CliQgroup:
    referenced: int
    exclusive: int
    max_referenced: int | None
    max_exclusive: int | None


def qgroup_show(mount: Path, level: int = 0) -> dict[int, CliQgroup]:
    """`btrfs qgroup show -re --raw`: every qgroup of a level by qgroupid (level 0: by subvolume id)."""
    found = {}
    for line in cli("btrfs", "qgroup", "show", "-re", "--raw", str(mount)).splitlines():
        fields = line.split()
        if not fields or not fields[0].startswith(f"{level}/"):
            continue
        rfer, excl, max_rfer, max_excl = fields[1:5]
        found[level << 48 | int(fields[0].split("/")[1])] = CliQgroup(
            int(rfer),
            int(excl),
            None if max_rfer == "none" else int(max_rfer),
            None if max_excl == "none" else int(max_excl),
        )
    return found


@dataclasses.dataclass(frozen=True)
class CliSubvolume:
    parent_id: int
    top_level: int
    path: str
    uuid: str
    parent_uuid: str | None


def subvolume_list(mount: Path) -> dict[int, CliSubvolume]:
    """`btrfs subvolume list -puq`: every subvolume of the filesystem by id."""
    found = {}
    for line in cli("btrfs", "subvolume", "list", "-puq", str(mount)).splitlines():
        # ID 257 gen 10 parent 5 top level 5 parent_uuid <uuid|-> uuid <uuid> path <path>
        head, _, path = line.partition(" path ")
        fields = head.split()
        values = {fields[i]: fields[i + 1] for i in range(0, len(fields) - 1)}
        found[int(values["ID"])] = CliSubvolume(
            parent_id=int(values["parent"]),
            top_level=int(fields[fields.index("level") + 1]),
            path=path,
            uuid=values["uuid"],
            parent_uuid=None if values["parent_uuid"] == "-" else values["parent_uuid"],
        )
    return found


def subvolume_paths(mount: Path) -> set[str]:
    return {entry.path for entry in subvolume_list(mount).values()}


def subvolume_show(path: Path) -> dict[str, str]:
    """`btrfs subvolume show`: its "Key: value" lines (the qgroup part and the snapshot list left out)."""
    shown = {}
    for line in cli("btrfs", "subvolume", "show", str(path)).splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key not in shown:
            shown[key.strip()] = value.strip()
    return shown


def cli_time(otime: float) -> str:
    """How `btrfs subvolume show` prints a creation time: local time, whole seconds."""
    return datetime.datetime.fromtimestamp(int(otime)).astimezone().strftime("%Y-%m-%d %H:%M:%S %z")


def property_ro(path: Path) -> bool:
    value = cli("btrfs", "property", "get", "-ts", str(path), "ro").strip()
    assert value in ("ro=true", "ro=false"), value
    return value == "ro=true"


def filesystem_df(mount: Path) -> dict[str, tuple[int, int]]:
    """`btrfs filesystem df -b`: (total, used) by block group type (Data, Metadata, System, GlobalReserve)."""
    found = {}
    for line in cli("btrfs", "filesystem", "df", "-b", str(mount)).splitlines():
        kind, _, rest = line.partition(",")
        sizes = dict(part.strip().split("=") for part in rest.split(":", 1)[1].split(","))
        found[kind.strip()] = (int(sizes["total"]), int(sizes["used"]))
    return found


def device_of(mount: Path) -> str:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        source, target = line.split()[:2]
        if target.replace("\\040", " ") == str(mount):
            return source
    raise AssertionError(f"{mount} is not mounted")


def fsid_of(mount: Path) -> str:
    return cli("findmnt", "--noheadings", "--output", "UUID", str(mount)).strip()


def sysfs_quota_mode(mount: Path) -> str:
    return (Path("/sys/fs/btrfs") / fsid_of(mount) / "qgroups" / "mode").read_text().strip()


def superblock_generation(device: str) -> int:
    """The generation of the superblock on the device: the last transaction committed to disk."""
    for line in cli("btrfs", "inspect-internal", "dump-super", device).splitlines():
        fields = line.split()
        if fields and fields[0] == "generation":
            return int(fields[1])
    raise AssertionError(f"no generation in the superblock of {device}")


def orphans(mount: Path) -> list[int]:
    """Ids of subvolumes deleted but not yet dropped by the cleaner."""
    with subvolume.opened(mount) as fd:
        items = trees.tree_search(
            fd,
            ioctl.ROOT_TREE,
            (ORPHAN_OBJECTID, ORPHAN_ITEM_KEY, 0),
            (ORPHAN_OBJECTID, ORPHAN_ITEM_KEY, ioctl.U64_MAX),
            str(mount),
        )
        return [offset for _objectid, _type, offset, _data in items]


def settle(mount: Path, timeout: float = 30.0, qgroup_grace: float = 1.0) -> None:
    """Commits, and waits until the cleaner has dropped every deleted subvolume, and their qgroups.

    The kernel (6.11+) removes a dropped subvolume's empty qgroup a moment after its orphan item
    goes, so empty qgroups without a subvolume are waited for too, up to `qgroup_grace` seconds:
    under simple quotas one may stay for good (a qgroup whose charge ran out after its subvolume went).
    """

    def dropped() -> bool:
        filesystem.sync(mount)
        return not orphans(mount)

    eventually(dropped, "every deleted subvolume dropped by the cleaner", timeout)
    filesystem.sync(mount)
    grace = time.monotonic() + qgroup_grace
    while time.monotonic() < grace and empty_stale_qgroups(mount):
        time.sleep(0.02)
        filesystem.sync(mount)


def empty_stale_qgroups(mount: Path) -> set[int]:
    """Level-0 qgroups of subvolumes that no longer exist, with nothing charged to them."""
    live = subvolume.list_all(mount)
    return {
        qgroupid
        for qgroupid, usage in quota.usage_all(mount).items()
        if qgroupid >= ioctl.FIRST_FREE_OBJECTID and qgroupid not in live and usage.referenced == 0
    }


def tree(root: Path) -> list[tuple[str, int, bool]]:
    """Every path under root with its inode number and whether it is a directory: to see changes."""
    found = []
    for directory, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(directory) / name
            st = path.lstat()
            found.append((str(path.relative_to(root)), st.st_ino, path.is_dir()))
    return sorted(found)


def write_random(path: Path, size: int, seed: int, overwrite: bool = False) -> None:
    """A file of `size` bytes that no other test writes (seeded, so not compressible or shared).

    overwrite: write over the start of an existing file in place instead of replacing it.
    """
    block = hashlib.sha512(str(seed).encode()).digest() * 2048  # 128 KiB
    with open(path, "r+b" if overwrite else "wb") as f:
        remaining = size
        counter = 0
        while remaining > 0:
            chunk = hashlib.sha512(counter.to_bytes(8, "little") + block[:64]).digest() + block[64:]
            f.write(chunk[:remaining])
            remaining -= len(chunk)
            counter += 1


def hash_tree(root: Path) -> dict[str, str]:
    """sha256 of every regular file under root, by relative path."""
    found = {}
    for directory, _dirnames, filenames in os.walk(root):
        for name in filenames:
            path = Path(directory) / name
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def sparse_copy(source: Path, destination: Path) -> None:
    """Copies a sparse file's data extents only (SEEK_DATA/SEEK_HOLE): a point-in-time disk image."""
    with open(source, "rb") as src, open(destination, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        dst.truncate(size)
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after offset
                break
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            position = start
            while position < end:
                copied = os.copy_file_range(src.fileno(), dst.fileno(), end - position, position, position)
                if copied == 0:
                    break
                position += copied
            offset = end


@contextlib.contextmanager
def mounted_image(image: Path, mountpoint: Path) -> Iterator[Path]:
    """Mounts a copy of a pool's disk image read-only on a loop device of its own; always detached.

    The copy has the same fsid as the live pool; kernels since 6.7 give it a temporary one.
    """
    with contextlib.ExitStack() as cleanup:
        device = cli("losetup", "--find", "--show", "--read-only", str(image)).strip()
        cleanup.callback(cli, "losetup", "--detach", device)
        mountpoint.mkdir()
        cleanup.callback(mountpoint.rmdir)
        cli("mount", "-t", "btrfs", "-o", "ro", device, str(mountpoint))
        cleanup.callback(cli, "umount", str(mountpoint))
        yield mountpoint


@contextlib.contextmanager
def power_cut_image(mount: Path, scratch: Path) -> Iterator[Path]:
    """What the disk of the pool at `mount` holds at this instant, mounted read-only.

    The pool's image file receives every write the filesystem has sent to its loop device; anything
    the filesystem holds only in memory (an uncommitted transaction) is not in it. So a copy of the
    image taken now is the disk a power cut now would leave behind.
    """
    image = mount.parent / "pool.img"
    copy = scratch / "power-cut.img"
    sparse_copy(image, copy)
    try:
        with mounted_image(copy, scratch / "power-cut") as mountpoint:
            yield mountpoint
    finally:
        copy.unlink()


class RecordingBackend(KernelBackend):
    """The kernel backend, recording every call that changes something."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.changes: list[str] = []

    def create_subvolume(self, path: Path, qgroup: int | None = None) -> None:
        self.changes.append("create_subvolume")
        super().create_subvolume(path, qgroup)

    def snapshot(self, source: Path, path: Path, readonly: bool, qgroup: int | None = None) -> None:
        self.changes.append("snapshot")
        super().snapshot(source, path, readonly, qgroup)

    def create_qgroup(self, qgroupid: int) -> None:
        self.changes.append("create_qgroup")
        super().create_qgroup(qgroupid)

    def destroy_qgroup(self, qgroupid: int) -> None:
        self.changes.append("destroy_qgroup")
        super().destroy_qgroup(qgroupid)

    def assign_qgroup(self, member: int, parent: int, assign: bool) -> None:
        self.changes.append("assign_qgroup")
        super().assign_qgroup(member, parent, assign)

    def delete_subvolume(self, path: Path) -> None:
        self.changes.append("delete_subvolume")
        super().delete_subvolume(path)

    def rename(self, source: Path, destination: Path) -> None:
        self.changes.append("rename")
        super().rename(source, destination)

    def set_readonly(self, path: Path, readonly: bool) -> None:
        self.changes.append("set_readonly")
        super().set_readonly(path, readonly)

    def enable_quota(self, mode: QuotaMode) -> None:
        self.changes.append("enable_quota")
        super().enable_quota(mode)

    def set_limit(self, qgroupid: int, limit: int | None) -> None:
        self.changes.append("set_limit")
        super().set_limit(qgroupid, limit)

    def sync(self) -> int:
        self.changes.append("sync")
        return super().sync()
