"""Pools for the kernel tests of btrfs_core: one per module and quota mode where tests do not interfere."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from btrfs_core import quota
from btrfs_core.models import QuotaMode
from tests.conftest import kernel_skip_reason
from tests.support import loop_pool


def _quota_mount(mode: QuotaMode) -> Iterator[Path]:
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    with loop_pool(prefix="btrfs-csi-core-") as mount:
        if mode is not QuotaMode.OFF:
            quota.enable(mount, mode)
        yield mount


@pytest.fixture(scope="module")
def mount_off() -> Iterator[Path]:
    """A 1 GiB btrfs with quotas off, shared by the tests of one module."""
    yield from _quota_mount(QuotaMode.OFF)


@pytest.fixture(scope="module", params=[QuotaMode.FULL, QuotaMode.SIMPLE], ids=["full", "simple"])
def quota_mount(request: pytest.FixtureRequest) -> Iterator[tuple[Path, QuotaMode]]:
    """A 1 GiB btrfs with quotas on, once per quota mode, shared by the tests of one module."""
    mode: QuotaMode = request.param
    for mount in _quota_mount(mode):
        yield mount, mode
