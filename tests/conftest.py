"""Shared fixtures: a real btrfs pool on a loop device for tests marked `kernel`."""

import contextlib
import os
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from tests.support import loop_pool


def kernel_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root to make loop devices and mount btrfs"
    if shutil.which("mkfs.btrfs") is None:
        return "needs mkfs.btrfs (Debian package btrfs-progs; `make test` installs it)"
    if "btrfs" not in Path("/proc/filesystems").read_text():
        return "the kernel has no btrfs"
    return None


@pytest.fixture
def btrfs_mount() -> Iterator[Path]:
    """The mount point of a fresh 1 GiB btrfs with quotas off, removed afterwards."""
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    with loop_pool() as mountpoint:
        yield mountpoint


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now."""
    return free_ports(["one"])["one"]


def free_ports(names: Iterable[str]) -> dict[str, int]:
    """A port like free_port's for each name, no two the same: each is held until all are picked (two
    picks one after the other may return the same port)."""
    with contextlib.ExitStack() as held:
        ports: dict[str, int] = {}
        for name in names:
            s = held.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            ports[name] = s.getsockname()[1]
        return ports
