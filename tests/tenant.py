"""A hostile tenant: a pod is a process with uid 65534, no groups and no capabilities, working in its
volume with what the kernel grants any user (creating subvolumes, making its own ones read-only)."""

import os
import traceback
from collections.abc import Callable
from pathlib import Path

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


def as_pod(volume: Path, work: Callable[[], None]) -> None:
    """Runs `work` in a forked child as the pod, its working directory the volume's root; a failure in
    it (or a child that kept a capability) fails the caller with the child's traceback.

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
            work()
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
