"""A received volume is out of sight until claimed, on the real kernel: its capacity stays reserved
through the reconciler's passes, claim makes it a volume, abandon leaves nothing."""

import os
import threading
import time
from collections.abc import Iterator

import pytest

from btrfs_core.errors import InUse, NotFound
from btrfs_core.models import Source, SourceKind
from btrfs_core.pool import Pool
from tests.conftest import kernel_skip_reason
from tests.support import loop_pool

from .tree_fingerprint import MiB

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def pools() -> Iterator[tuple[Pool, Pool]]:
    """A sender holding a snapshot "snap" of 1 MiB, and a receiver."""
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    with loop_pool(prefix="btrfs-csi-send-") as a, loop_pool(prefix="btrfs-csi-receive-") as b:
        sender = Pool.open(a)
        sender.create_volume("origin", 32 * MiB)
        (sender.volume_path("origin") / "data").write_bytes(os.urandom(MiB))
        sender.create_snapshot("snap", "origin")
        yield sender, Pool.open(b)


SOURCE = Source(SourceKind.SNAPSHOT, Pool.snapshot_id("snap"))


def stream(sender: Pool) -> bytes:
    read_end, write_end = os.pipe()
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_end, 1 << 20), b"")))
    reader.start()
    try:
        sender.transfers.send_snapshot(SOURCE.id, write_end)
    finally:
        os.close(write_end)
        reader.join(timeout=60)
        os.close(read_end)
    return b"".join(chunks)


def test_a_received_volume_is_out_of_sight_until_claimed(pools: tuple[Pool, Pool]) -> None:
    sender, pool = pools
    available = pool.available_capacity()
    received = pool.transfers.receive("claimed", 0, SOURCE, 32 * MiB, [stream(sender)])
    assert received.parked is not None and received.parked.parent == pool.staging_dir
    assert pool.list_volume_ids() == []
    with pytest.raises(NotFound):
        pool.get_volume("claimed")
    # The reconciler's passes leave it alone: its capacity stays promised, its subvolume in staging.
    assert pool.upkeep.release_vanished_volumes() == []
    assert pool.upkeep.clear_staging().removed == 0
    assert pool.available_capacity() < available - 16 * MiB
    volume = pool.transfers.claim(received)
    assert pool.get_volume("claimed") == volume
    assert (pool.volume_path("claimed") / "data").stat().st_size == MiB
    assert os.listdir(pool.staging_dir) == []
    pool.delete_volume("claimed")


def test_a_volume_waiting_for_its_claim_refuses_a_local_create_or_delete(pools: tuple[Pool, Pool]) -> None:
    """A create of the same name would build a second volume and replace the received one's promise, a
    delete would release that promise: the controller's per-volume lock keeps such calls apart, and so
    does the core."""
    sender, pool = pools
    received = pool.transfers.receive("waiting", 0, SOURCE, 32 * MiB, [stream(sender)])
    with pytest.raises(InUse, match="being received"):
        pool.create_volume("waiting", 32 * MiB)
    with pytest.raises(InUse, match="being received"):  # it would release the receive's promise
        pool.delete_volume(Pool.volume_id("waiting"))
    volume = pool.transfers.claim(received)
    assert (pool.volume_path("waiting") / "data").stat().st_size == MiB
    assert pool.create_volume("waiting", 32 * MiB, SOURCE) == volume  # now the repeated create it is
    pool.delete_volume("waiting")


def test_an_abandoned_volume_leaves_nothing(pools: tuple[Pool, Pool]) -> None:
    sender, pool = pools
    available = pool.available_capacity()
    received = pool.transfers.receive("abandoned", 0, SOURCE, 32 * MiB, [stream(sender)])
    pool.transfers.abandon(received)
    assert pool.list_volume_ids() == [] and os.listdir(pool.staging_dir) == []
    assert pool.transfers.pending() == set()
    assert pool.available_capacity() > available - 16 * MiB  # its promise released


def test_the_capacity_of_a_volume_being_received_is_not_released_as_vanished(
    pools: tuple[Pool, Pool],
) -> None:
    """The reconciler forgets the capacity of volumes gone from volumes/; one still arriving is not gone."""
    _, pool = pools
    available = pool.available_capacity()
    read_end, write_end = os.pipe()
    failed: list[BaseException] = []

    def receive() -> None:
        try:
            pool.transfers.claim(pool.transfers.receive("arriving", 0, SOURCE, 32 * MiB, read_end))
        except BaseException as exc:
            failed.append(exc)

    receiver = threading.Thread(target=receive)
    receiver.start()
    try:
        deadline = time.monotonic() + 60
        while not os.listdir(pool.staging_dir):  # its landing: the capacity is reserved by then
            assert receiver.is_alive() and time.monotonic() < deadline, failed
            time.sleep(0.01)
        assert pool.upkeep.release_vanished_volumes() == []
    finally:
        os.close(write_end)  # an empty stream: the receive fails and releases the capacity itself
        receiver.join(timeout=60)
        os.close(read_end)
    assert failed and pool.available_capacity() > available - 16 * MiB
