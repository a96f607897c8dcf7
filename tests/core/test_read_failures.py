"""Failures are not refusals: a volume whose metadata cannot be read (EIO, EPERM, EACCES) is an error,
never "does not exist" or "not ours". Injected through the fake backend; no root needed."""

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from btrfs_core.errors import KernelError, NotFound
from btrfs_core.fake import FakeBackend
from btrfs_core.ioctl import error_from_os
from btrfs_core.pool import Pool

MiB = 1 << 20
FAILURES = [errno.EIO, errno.EPERM, errno.EACCES]


class FailingReads(FakeBackend):
    """The fake, with the metadata of the objects named in `failing` unreadable (that errno)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.failing: dict[str, int] = {}

    def read_xattr(self, path: Path, name: str) -> bytes | None:
        code = self.failing.get(path.name)
        if code is not None:
            raise error_from_os("read metadata", str(path), OSError(code, os.strerror(code)))
        return super().read_xattr(path, name)


@pytest.fixture
def pool(tmp_path: Path) -> tuple[Pool, FailingReads]:
    backend = FailingReads(tmp_path)
    pool = Pool.open(tmp_path, backend=backend)
    pool.create_volume("pvc-ok", 8 * MiB)
    pool.create_volume("pvc-damaged", 8 * MiB)
    pool.create_snapshot("snap-damaged", "pvc-damaged")
    return pool, backend


def _is_the_failure(exc: BaseException, code: int) -> bool:
    return isinstance(exc, KernelError) and exc.errno == code and not isinstance(exc, NotFound)


def _each_fails_with(code: int, *calls: Callable[[], object]) -> None:
    for call in calls:
        with pytest.raises(KernelError) as raised:
            call()
        assert _is_the_failure(raised.value, code), raised.value


@pytest.mark.parametrize("code", FAILURES, ids=errno.errorcode.get)
def test_an_unreadable_volume_is_an_error_not_absent(pool: tuple[Pool, FailingReads], code: int) -> None:
    pool_, backend = pool
    backend.failing["pvc-damaged"] = code
    _each_fails_with(
        code,
        lambda: pool_.get_volume("pvc-damaged"),
        lambda: pool_.list_volumes(),  # not silently left out of the list
        lambda: pool_.list_volumes(["pvc-ok", "pvc-damaged"]),
        lambda: pool_.create_volume("pvc-damaged", 8 * MiB),  # not "held by something not ours"
        lambda: pool_.expand_volume("pvc-damaged", 16 * MiB),
        lambda: pool_.stats.volume_health("pvc-damaged"),
    )
    assert [volume.id for volume in pool_.list_volumes(["pvc-ok"])] == ["pvc-ok"]
    backend.failing.clear()
    assert pool_.get_volume("pvc-damaged").capacity == 8 * MiB  # nothing was lost


@pytest.mark.parametrize("code", FAILURES, ids=errno.errorcode.get)
def test_an_unreadable_snapshot_is_an_error_not_absent(pool: tuple[Pool, FailingReads], code: int) -> None:
    pool_, backend = pool
    backend.failing["snap-damaged"] = code
    _each_fails_with(
        code,
        lambda: pool_.get_snapshot("snap-damaged"),
        lambda: pool_.list_snapshots(),
        lambda: pool_.create_snapshot("snap-damaged", "pvc-ok"),
    )


@pytest.mark.parametrize("code", FAILURES, ids=errno.errorcode.get)
def test_the_capacity_ledger_does_not_skip_an_unreadable_volume(tmp_path: Path, code: int) -> None:
    backend = FailingReads(tmp_path)
    Pool.open(tmp_path, backend=backend).create_volume("pvc-damaged", 8 * MiB)
    backend.failing["pvc-damaged"] = code
    reopened = Pool.open(tmp_path, backend=backend)
    # Promising its capacity to another volume would break the promise made to it.
    with pytest.raises(KernelError) as raised:
        reopened.create_volume("pvc-new", 8 * MiB)
    assert _is_the_failure(raised.value, code), raised.value


def test_a_volume_without_metadata_is_still_not_ours(pool: tuple[Pool, FailingReads]) -> None:
    pool_, backend = pool
    backend.create_subvolume(pool_.volumes_dir / "alien")
    with pytest.raises(NotFound):
        pool_.get_volume("alien")
    assert {volume.id for volume in pool_.list_volumes()} == {"pvc-ok", "pvc-damaged"}


class RefusingDestroy(FakeBackend):
    """The fake, each qgroup destroy failing with the errno `results` names for that qgroup."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.results: dict[int, int] = {}

    def destroy_qgroup(self, qgroupid: int) -> None:
        code = self.results[qgroupid]
        raise error_from_os("qgroup destroy", f"qgroup 0/{qgroupid}", OSError(code, "injected"))


@pytest.mark.parametrize("code", [errno.EIO, errno.EPERM], ids=errno.errorcode.get)
def test_removing_stale_qgroups_raises_what_is_not_busy(tmp_path: Path, code: int) -> None:
    """EBUSY (the cleaner has not dropped the subvolume yet) and ENOENT (gone) are left for the next
    round; any other failure is raised, not taken for one of them."""
    backend = RefusingDestroy(tmp_path)
    pool = Pool.open(tmp_path, backend=backend)
    backend.results = {300: errno.EBUSY, 301: code}
    with pytest.raises(KernelError) as raised:
        pool.upkeep.remove_stale_qgroups([300, 301])
    assert raised.value.errno == code
    backend.results[301] = errno.ENOENT
    assert pool.upkeep.remove_stale_qgroups([300, 301]) == []
