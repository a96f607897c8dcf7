"""Test support shared by the suites, the demo and the bench: `loop_pool`, a throwaway btrfs on a loop
device, and `eventually`, the one way a test waits for what another thread, process or the kernel does.

A loop pool is cleaned up by the exact device and mount path this process made, also when the body fails.
"""

import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from btrfs_core import mounts

T = TypeVar("T")
DEFAULT_SIZE = 1 << 30
UNMOUNT_PATIENCE = 30.0  # seconds a pool may stay busy at clean-up before it is detached lazily


def eventually(
    condition: Callable[[], T],
    what: str,
    timeout: float = 30.0,
    interval: float = 0.02,
    ignoring: tuple[type[Exception], ...] = (),
) -> T:
    """Calls `condition` until it returns something true, and returns that; fails the test, naming
    `what` and the last result, once `timeout` seconds have passed without. An exception of a type in
    `ignoring` counts as not yet (a server still starting); any other fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result: T | Exception = condition()
        except ignoring as exc:
            result = exc
        if result and not isinstance(result, Exception):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s; last: {result!r}")
        time.sleep(interval)


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
    # A thread of the test's pool can still hold the pool's root open for a moment (a commit kick
    # blocked until the commit in progress ends): busy for now, not for good.
    try:
        eventually(lambda: _unmounted(mountpoint), f"{mountpoint} unmounted", UNMOUNT_PATIENCE, 0.1)
    except AssertionError:
        # Busy for good: something still holds the pool open. Detached lazily, so that no mount is
        # left behind and the filesystem and its loop device go once that lets go; still a failure.
        subprocess.run(["umount", "--lazy", str(mountpoint)], check=False, timeout=60)
        raise


def _unmounted(mountpoint: Path) -> bool:
    done = subprocess.run(["umount", str(mountpoint)], capture_output=True, text=True, timeout=60)
    if done.returncode != 0 and "busy" not in done.stderr:
        raise AssertionError(f"umount {mountpoint}: {done.stderr.strip()}")
    return done.returncode == 0
