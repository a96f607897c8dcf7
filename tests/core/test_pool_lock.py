"""The pool's lock guards the name check, the capacity ledger and staging's sets, never a kernel call:
a create waiting in the kernel holds up no other call, and the upkeep leaves what it builds alone."""

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from btrfs_core.backend import KernelBackend
from btrfs_core.pool import Pool

pytestmark = pytest.mark.kernel

MiB = 1 << 20
HELD = 3 * MiB  # the capacity of the create that the backend holds in its limit call
DEADLINE = 60.0


class Holding(KernelBackend):
    """Holds a create of HELD bytes in its qgroup-limit call, its subvolume in staging, until released."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = threading.Event()
        self.release = threading.Event()

    def set_limit(self, qgroupid: int, limit: int | None) -> None:
        if limit == HELD:
            self.entered.set()
            self.release.wait(DEADLINE)
        super().set_limit(qgroupid, limit)


def test_a_create_in_the_kernel_holds_up_no_other_call(btrfs_mount: Path) -> None:
    backend = Holding(btrfs_mount)
    pool = Pool.open(btrfs_mount, backend=backend)
    with ThreadPoolExecutor(2) as calls:
        held = calls.submit(pool.create_volume, "held", HELD)
        try:
            assert backend.entered.wait(DEADLINE), "the held create never reached its limit call"

            def meanwhile() -> tuple[int, list[str], int, str]:
                other = pool.create_volume("other", MiB)
                debris = pool.upkeep.clear_staging()
                released = pool.upkeep.release_vanished_volumes()
                return debris.removed, released, pool.upkeep.repair_quotas().orphans_removed, other.id

            during = calls.submit(meanwhile)
            # Waited for with a deadline: with the lock held across the kernel call, these never end
            # while the held create waits.
            removed, released, orphans, other = during.result(DEADLINE)
        finally:
            backend.release.set()
        volume = held.result(DEADLINE)
    # The upkeep took neither the subvolume being built for debris nor its qgroup for an orphan, and
    # its capacity stayed promised.
    assert (removed, released, orphans) == (0, [], 0)
    assert pool.get_volume(volume.id).capacity == HELD
    assert {v.id for v in pool.list_volumes()} == {volume.id, other}
    assert pool.upkeep.release_vanished_volumes() == []
