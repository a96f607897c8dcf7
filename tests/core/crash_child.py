"""The victim of the crash tests: runs one Pool operation in its own process and stops at a chosen
point, tells the parent through a pipe, and waits there for the SIGKILL.

    python -m tests.core.crash_child '{"root": ..., "fd": ..., "op": ..., "args": [...], "stop": ...}'

Stop points:
  qgroup-created       after a new volume's level-1 qgroup is made, before its subvolume
  rename-into-volumes  just before a staged volume is renamed into volumes/
  delete-subvolume     just before a subvolume is deleted (delete_volume: after it left volumes/)
  snapshot             just before the snapshot ioctl
  snapshot-staged      after the snapshot ioctl: a writable snapshot under a hidden name, no metadata
  snapshot-rename      just before a finished read-only snapshot is renamed from its hidden name
  snapshot-made        after that rename, before the commit
  returned             after the operation returned (the message carries its result)
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from btrfs_core.backend import KernelBackend
from btrfs_core.models import Source, SourceKind
from btrfs_core.pool import Pool

PathArg = str | bytes | os.PathLike[str] | os.PathLike[bytes]


def main() -> None:
    spec = json.loads(sys.argv[1])
    root, signal_fd, stop = Path(spec["root"]), int(spec["fd"]), spec["stop"]

    def halt(message: str) -> NoReturn:
        os.write(signal_fd, (message + "\n").encode())
        while True:
            time.sleep(3600)

    pool = Pool.open(root)
    real_rename = os.rename
    real_delete = KernelBackend.delete_subvolume
    real_snapshot = KernelBackend.snapshot
    real_create_qgroup = KernelBackend.create_qgroup

    def rename(
        src: PathArg, dst: PathArg, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
    ) -> None:
        destination = Path(os.fsdecode(dst))
        if stop == "rename-into-volumes" and destination.parent == pool.volumes_dir:
            halt(f"stopped before rename {os.fsdecode(src)} -> {destination}")
        if stop == "snapshot-rename" and destination.parent == pool.snapshots_dir:
            halt(f"stopped before rename {os.fsdecode(src)} -> {destination}")
        real_rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        if stop == "snapshot-made" and destination.parent == pool.snapshots_dir:
            halt(f"stopped after the snapshot, renamed into {destination}")

    def create_qgroup(self: KernelBackend, qgroupid: int) -> None:
        real_create_qgroup(self, qgroupid)
        if stop == "qgroup-created":
            halt(f"stopped after creating qgroup {qgroupid}")

    def delete_subvolume(self: KernelBackend, path: Path) -> None:
        if stop == "delete-subvolume":
            halt(f"stopped before deleting {path}")
        real_delete(self, path)

    def snapshot(
        self: KernelBackend, source: Path, path: Path, readonly: bool, qgroup: int | None = None
    ) -> None:
        if stop == "snapshot":
            halt(f"stopped before snapshot {source} -> {path}")
        real_snapshot(self, source, path, readonly, qgroup)
        if stop == "snapshot-staged":
            halt(f"stopped after snapshot {source} -> {path}")

    os.rename = rename
    KernelBackend.delete_subvolume = delete_subvolume  # type: ignore[method-assign]
    KernelBackend.snapshot = snapshot  # type: ignore[method-assign]
    KernelBackend.create_qgroup = create_qgroup  # type: ignore[method-assign]

    op, args = spec["op"], spec["args"]
    result: dict[str, Any]
    if op == "create_volume":
        name, capacity, source, metadata = args
        made = pool.create_volume(
            name, capacity, Source(SourceKind(source[0]), source[1]) if source else None, metadata
        )
        result = {"id": made.id, "subvolume_id": made.subvolume_id}
    elif op == "expand_volume":
        grown = pool.expand_volume(args[0], args[1])
        result = {"id": grown.id, "capacity": grown.capacity}
    elif op == "delete_volume":
        pool.delete_volume(args[0])
        result = {}
    elif op == "create_snapshot":
        snap = pool.create_snapshot(args[0], args[1])
        result = {"id": snap.id, "subvolume_id": snap.subvolume_id}
    else:
        raise SystemExit(f"crash_child: unknown operation {op}")
    halt("returned " + json.dumps(result))


if __name__ == "__main__":
    main()
