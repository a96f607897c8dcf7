"""The loopfile pool init container's script, run for real on this machine (root, loop devices,
btrfs): it formats once, reuses everything on later starts, and never formats a foreign
filesystem. The script is taken from the rendered chart, so what is tested is what ships."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chart.helm_render import find, init_containers, render
from tests.conftest import kernel_skip_reason

pytestmark = pytest.mark.kernel


def _script() -> str:
    init = init_containers(find(render("loopfile-pool"), "DaemonSet"))["pool-init"]
    assert init["command"] == ["/bin/sh", "-euc"]
    return str(init["args"][0])


def _loop_devices(image: Path) -> list[str]:
    out = subprocess.run(
        ["losetup", "-j", str(image)], capture_output=True, text=True, check=True, timeout=30
    )
    return [line.split(":", 1)[0] for line in out.stdout.splitlines() if line.strip()]


def _fstype(path: Path) -> str:
    out = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE", "--mountpoint", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""


class Node:
    """A pretend node: the pool mountpoint and the image directory under a temporary root."""

    def __init__(self, root: Path, size: str = "256M") -> None:
        self.pool = root / "pool"
        self.image = root / "loop" / "pool.img"
        self.size = size

    def run_init(self) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "POOL_PATH": str(self.pool),
            "IMAGE_PATH": str(self.image),
            "IMAGE_SIZE": self.size,
        }
        return subprocess.run(
            ["/bin/sh", "-euc", _script()], env=env, capture_output=True, text=True, timeout=120
        )

    def unmount(self) -> None:
        while _fstype(self.pool) == "btrfs":
            subprocess.run(["umount", str(self.pool)], check=True, timeout=60)

    def detach(self) -> None:
        if self.image.exists():
            for device in _loop_devices(self.image):
                subprocess.run(["losetup", "-d", device], check=False, timeout=60)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    missing = [t for t in ("findmnt", "blkid", "losetup", "truncate") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (util-linux)")
    pretend = Node(tmp_path)
    try:
        yield pretend
    finally:
        pretend.unmount()
        pretend.detach()


def test_formats_once_and_reuses_across_restarts(node: Node) -> None:
    first = node.run_init()
    assert first.returncode == 0, first.stderr
    assert "formatting" in first.stdout
    assert _fstype(node.pool) == "btrfs"
    (node.pool / "marker").write_text("kept")
    (device,) = _loop_devices(node.image)

    # Container restart: everything is still in place.
    again = node.run_init()
    assert again.returncode == 0, again.stderr
    assert "already mounted" in again.stdout
    assert _loop_devices(node.image) == [device]

    # Pod recreated after the mount went away but the loop device stayed.
    node.unmount()
    remount = node.run_init()
    assert remount.returncode == 0, remount.stderr
    assert "formatting" not in remount.stdout
    assert _loop_devices(node.image) == [device]
    assert (node.pool / "marker").read_text() == "kept"

    # Node reboot: no mount, no loop device; the image and its data survive.
    node.unmount()
    node.detach()
    reboot = node.run_init()
    assert reboot.returncode == 0, reboot.stderr
    assert "formatting" not in reboot.stdout
    assert (node.pool / "marker").read_text() == "kept"


def test_refuses_to_format_a_foreign_filesystem(node: Node) -> None:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("needs mkfs.ext4 (e2fsprogs) to make a foreign filesystem")
    node.image.parent.mkdir(parents=True)
    subprocess.run(["truncate", "-s", node.size, str(node.image)], check=True, timeout=30)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(node.image)], check=True, timeout=60)
    result = node.run_init()
    assert result.returncode != 0
    assert "refusing to format" in result.stderr
    assert _fstype(node.pool) != "btrfs"
