"""A throwaway btrfs pool on a loop device: image file, loop device, mkfs, mount; always removed.

Cleanup is by the exact device and mount path this process made, also when the body fails.
"""

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from btrfs_core import mounts

DEFAULT_SIZE = 1 << 30


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=60).stdout.strip()


@contextlib.contextmanager
def loop_pool(size: int = DEFAULT_SIZE, prefix: str = "btrfs-csi-") -> Iterator[Path]:
    """Yields the mount point of a fresh btrfs filesystem of `size` bytes (quotas off)."""
    with contextlib.ExitStack() as cleanup:
        workdir = Path(tempfile.mkdtemp(prefix=prefix))
        cleanup.callback(os.rmdir, workdir)
        image = workdir / "pool.img"
        with open(image, "wb") as f:
            f.truncate(size)
        cleanup.callback(image.unlink)
        device = _run("losetup", "--find", "--show", str(image))
        cleanup.callback(_run, "losetup", "--detach", device)
        _run("mkfs.btrfs", "--quiet", "--force", device)
        mountpoint = workdir / "mnt"
        mountpoint.mkdir()
        cleanup.callback(mountpoint.rmdir)
        _run("mount", "-t", "btrfs", device, str(mountpoint))
        cleanup.callback(_unmount_all, device, mountpoint)
        yield mountpoint


def _unmount_all(device: str, mountpoint: Path) -> None:
    # Bind mounts of volumes left by a failed test keep the filesystem busy: detach every mount of
    # this device, newest first, then the pool itself.
    for entry in reversed(mounts.mountinfo()):
        if entry.source == device and entry.mount_point != str(mountpoint):
            subprocess.run(["umount", "--lazy", entry.mount_point], check=False, timeout=60)
    _run("umount", str(mountpoint))
