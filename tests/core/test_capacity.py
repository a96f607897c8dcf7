"""Honest capacity on the real kernel: every byte the pool promises can be written by the pods.

A pod is a process with uid 65534 and no capabilities writing into its volume's bind mount until the
kernel refuses: EDQUOT (its own limit, as promised) is fine, ENOSPC (the pool broke a promise) is not.
"""

import contextlib
import errno
import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from btrfs_core import capacity, filesystem
from btrfs_core.errors import InsufficientCapacity
from btrfs_core.pool import Pool
from tests.conftest import kernel_skip_reason
from tests.support import loop_pool

pytestmark = pytest.mark.kernel

MiB = 1 << 20
GiB = 1 << 30
POD_UID = 65534
# Bytes of a volume's limit that its own tree blocks take (measured: 32 KiB for a file written
# sequentially), with room to spare; the rest of the limit must be writable data.
TREE_MARGIN = MiB


@dataclass(frozen=True)
class Written:
    bytes: int
    error: str  # errno name that stopped the writer


def _write_until_refused(path: Path, most: int) -> Written:
    block = os.urandom(MiB)
    written = 0
    try:
        with open(path, "wb", buffering=0) as f:
            try:
                while written < most:
                    written += f.write(block)
            finally:
                os.fsync(f.fileno())
    except OSError as exc:
        return Written(written, errno.errorcode.get(exc.errno or 0, str(exc.errno)))
    return Written(written, "OK")


def as_pod(path: Path, most: int) -> Written:
    """_write_until_refused in a child process that dropped root: uid and gid 65534, no groups, and
    so no capabilities left (setuid from 0 clears them)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the pod
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(POD_UID)
            os.setuid(POD_UID)
            result = _write_until_refused(path, most)
            os.write(write_end, f"{result.bytes} {result.error}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as report:
        text = report.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and text, f"the pod failed: {status}"
    count, error = text.split()
    return Written(int(count), error)


def pod_fills(volume_dir: Path, name: str = "fill", most: int = 1 << 62) -> Written:
    """A pod writes random data into a bind mount of its volume until the kernel refuses (or it
    wrote `most` bytes)."""
    with tempfile.TemporaryDirectory(prefix="pod-") as sandbox:
        os.chmod(sandbox, 0o755)
        target = Path(sandbox) / "volume"
        target.mkdir()
        subprocess.run(["mount", "--bind", str(volume_dir), str(target)], check=True, timeout=60)
        try:
            os.chown(target, POD_UID, POD_UID)
            return as_pod(target / name, most)
        finally:
            subprocess.run(["umount", str(target)], check=True, timeout=60)


@contextlib.contextmanager
def small_pool(size: int = 2 * GiB, **options: object) -> Iterator[Pool]:
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    with loop_pool(size=size, prefix="btrfs-csi-capacity-") as mount:
        pool = Pool.open(mount, **options)  # type: ignore[arg-type]
        try:
            yield pool
        finally:
            pool.close()


def promise_everything(pool: Pool, prefix: str, step: int, falls: bool = True) -> list[str]:
    """Volumes of `step` bytes while they fit, then one of whatever is left: the whole promise.
    GetCapacity goes down with each by its capacity (less the 16 KiB its empty tree already holds);
    under overprovision (not `falls`) it stays at the free space until the promises reach it."""
    made: list[str] = []
    while True:
        before = pool.available_capacity()
        size = min(step, before) // MiB * MiB
        if size < MiB:
            return made
        name = f"{prefix}-{len(made)}"
        pool.create_volume(name, size)
        made.append(name)
        after = pool.available_capacity()
        assert not falls or after <= before - size + TREE_MARGIN, (name, size, before, after)
        with pytest.raises(InsufficientCapacity):
            pool.create_volume(f"{prefix}-too-big", after + MiB)


def assert_every_promise_writable(pool: Pool, names: list[str]) -> int:
    written = 0
    for name in names:
        volume = pool.get_volume(name)
        result = pod_fills(pool.volume_path(name))
        assert result.error == "EDQUOT", (name, volume.capacity, result)  # its limit, never ENOSPC
        assert result.bytes >= volume.capacity - TREE_MARGIN, (name, volume.capacity, result)
        written += result.bytes
    return written


@pytest.mark.parametrize("mode", ["simple", "full"])
def test_every_promised_byte_can_be_written(mode: str) -> None:
    with small_pool(quota_mode=mode) as pool:
        empty = pool.available_capacity()
        # Not the raw 2 GiB: metadata is DUP and takes its share of the device.
        assert 1700 * MiB < empty < 1900 * MiB, empty / MiB
        names = promise_everything(pool, "fill", 400 * MiB)
        assert len(names) == 5  # four of 400 MiB and the rest: a fifth 400 MiB would not be written
        assert pool.get_volume(names[-1]).capacity < 400 * MiB
        assert pool.available_capacity() < MiB
        written = assert_every_promise_writable(pool, names)
        assert written >= empty - len(names) * TREE_MARGIN


def keep_a_deleted_volumes_data(pool: Pool) -> None:
    """880 MiB written in a volume, which is deleted while a snapshot of it keeps them."""
    pool.create_volume("gone", 890 * MiB)
    assert pod_fills(pool.volume_path("gone"), most=880 * MiB) == Written(880 * MiB, "OK")
    pool.create_snapshot("kept", "gone")
    pool.delete_volume("gone")
    filesystem.sync(pool.root)


def test_what_a_kept_snapshot_holds_is_not_promised_again() -> None:
    with small_pool() as pool:
        keep_a_deleted_volumes_data(pool)
        empty = pool.available_capacity()
        assert empty < 1900 * MiB - 870 * MiB, empty / MiB  # the snapshot holds the 880 MiB
        names = promise_everything(pool, "after", 300 * MiB)
        written = assert_every_promise_writable(pool, names)
        assert written >= empty - len(names) * TREE_MARGIN


def test_a_create_sees_what_a_deleted_volumes_snapshot_keeps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Creates share a reading of the pool's space; a released promise drops it. Here a reading would
    otherwise last the whole test, taken when the pool was empty."""
    monkeypatch.setattr(capacity, "SPACE_READING_SECONDS", 3600.0)
    with small_pool() as pool:
        keep_a_deleted_volumes_data(pool)
        with pytest.raises(InsufficientCapacity):
            pool.create_volume("too-big", 1200 * MiB)  # it would fit the empty pool


def test_a_volume_may_only_grow_into_room_it_has_not_written() -> None:
    with small_pool() as pool:
        pool.create_volume("grows", 600 * MiB)
        assert pod_fills(pool.volume_path("grows")).error == "EDQUOT"
        filesystem.sync(pool.root)
        rest = pool.available_capacity()
        # Growing by exactly the rest is fine; a MiB more is not.
        with pytest.raises(InsufficientCapacity):
            pool.expand_volume("grows", 600 * MiB + rest + MiB)
        pool.expand_volume("grows", 600 * MiB + rest // MiB * MiB)
        assert pool.available_capacity() < MiB
        assert pod_fills(pool.volume_path("grows"), "more").error == "EDQUOT"


def test_overprovision_promises_more_and_only_as_much_more() -> None:
    with small_pool() as honest:
        promised = honest.available_capacity()
    with small_pool(overprovision=2.0) as pool:
        names = promise_everything(pool, "over", 400 * MiB, falls=False)
        total = sum(pool.get_volume(name).capacity for name in names)
        assert 2 * promised - len(names) * MiB <= total <= 2 * promised
