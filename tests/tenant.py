"""A hostile tenant: a pod is a process with uid 65534, no groups and no capabilities, working in its
volume with what the kernel grants any user (creating subvolumes, with a qgroup_inherit argument of its
own choosing; making its own ones read-only; writing)."""

import errno
import fcntl
import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from btrfs_core import ioctl

POD_UID = POD_GID = 65534


def hand_to_pod(volume: Path) -> None:
    """The volume's root becomes the pod's, as kubelet's fsGroup handling would make it writable."""
    os.chown(volume, POD_UID, POD_GID)


def capabilities() -> int:
    """This process's effective capability set (CapEff of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError("no CapEff line in /proc/self/status")


def as_pod(volume: Path, work: Callable[[], object]) -> Any:
    """Runs `work` in a forked child as the pod, its working directory the volume's root, and returns
    what it returned (a JSON value); a failure in it (or a child that kept a capability) fails the
    caller with the child's traceback.

    Forked, not executed: the interpreter may live where uid 65534 cannot read it.
    """
    directory = os.open(volume, os.O_RDONLY | os.O_DIRECTORY)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the pod; it must end in os._exit whatever happens
        status = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(POD_GID)
            os.setuid(POD_UID)  # leaving uid 0 clears every capability
            os.fchdir(directory)
            if capabilities() != 0:
                raise AssertionError(f"the pod kept capabilities {capabilities():#x}")
            os.write(write_end, json.dumps(work()).encode())
            status = 0
        except BaseException:
            os.write(write_end, traceback.format_exc().encode())
        finally:
            os._exit(status)
    os.close(directory)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        report = reader.read().decode()
    _, wait_status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(wait_status) != 0:
        raise AssertionError(f"the pod failed:\n{report}")
    return json.loads(report)


def make_subvolume(name: str, inherit: list[int] | None = None) -> int:
    """BTRFS_IOC_SUBVOL_CREATE_V2 in the working directory; with `inherit` (maybe empty) the tenant's
    own qgroup_inherit list. Returns the new subvolume's id."""
    args = ioctl.VolArgsV2(name=name.encode())
    kept = None if inherit is None else ioctl.qgroup_inherit(args, inherit)
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, ioctl.IOC_SUBVOL_CREATE_V2, args)
    finally:
        os.close(fd)
    del kept  # alive until the ioctl has read it
    return _subvolume_id(name)


def _subvolume_id(path: str) -> int:
    args = ioctl.InoLookupArgs(treeid=0, objectid=ioctl.FIRST_FREE_OBJECTID)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.ioctl(fd, ioctl.IOC_INO_LOOKUP, args)
    finally:
        os.close(fd)
    return int(args.treeid)


def write_until_refused(name: str, most: int) -> dict[str, int]:
    """Writes up to `most` bytes into a new file, 64 KiB at a time, with fsync at the end; returns the
    bytes written and the errno that stopped it (0 when all went in)."""
    block = b"\xa5" * (64 << 10)
    written = 0
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        while written < most:
            written += os.write(fd, block[: most - written])
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EDQUOT, errno.ENOSPC):
            raise
        return {"written": written, "errno": exc.errno}
    finally:
        os.close(fd)
    return {"written": written, "errno": 0}
