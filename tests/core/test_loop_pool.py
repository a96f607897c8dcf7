"""tests.support.loop_pool, the throwaway pool every kernel test runs on, leaves nothing behind."""

import os
import subprocess
from pathlib import Path

import pytest

from btrfs_core import mounts
from tests import support


def attached(device: str) -> bool:
    listed = subprocess.run(
        ["losetup", "--list", "--noheadings", "--output", "NAME"], capture_output=True, text=True
    )
    return device in listed.stdout.split()


@pytest.mark.kernel
def test_a_pool_held_open_past_its_clean_up_is_detached_lazily_and_the_failure_reported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(support, "UNMOUNT_PATIENCE", 0.5)
    held: int | None = None
    try:
        with (
            pytest.raises(AssertionError, match="unmounted"),
            support.loop_pool(prefix="btrfs-csi-held-") as mount,
        ):
            (device,) = [e.source for e in mounts.mountinfo() if e.mount_point == str(mount)]
            held = os.open(mount, os.O_RDONLY | os.O_DIRECTORY)
        assert str(mount) not in [entry.mount_point for entry in mounts.mountinfo()]
        assert not Path(mount).parent.exists()
    finally:
        if held is not None:
            os.close(held)
    support.eventually(lambda: not attached(device), f"{device} released once the pool is let go")
