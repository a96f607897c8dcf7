"""Snapshots that travel, on the real kernel: send streams out of one loop pool, received into another."""

import contextlib
import dataclasses
import io
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from btrfs_core import properties, quota, sendstream, subvolume
from btrfs_core.errors import (
    AlreadyExists,
    BtrfsCoreError,
    CapacityOutOfRange,
    InsufficientCapacity,
    InUse,
    InvalidArgument,
    NotFound,
)
from btrfs_core.models import Compression, QuotaMode, Source, SourceKind, Tuning, TuningRequest, Volume
from btrfs_core.pool import Pool
from btrfs_core.staging import Debris
from tests.conftest import kernel_skip_reason
from tests.support import loop_pool

from .oracle import hash_tree, power_cut_image, qgroup_show, subvolume_paths, write_random
from .tree_fingerprint import MiB, fingerprint, populate

pytestmark = pytest.mark.kernel

METADATA_XATTRS = {"trusted.btrfs-csi", "trusted.btrfs-csi.snapshot"}


@dataclasses.dataclass
class Pools:
    a: Pool  # the sender
    b: Pool  # the receiver


@pytest.fixture(
    scope="module",
    params=[(QuotaMode.SIMPLE, QuotaMode.FULL), (QuotaMode.FULL, QuotaMode.SIMPLE)],
    ids=["simple-to-full", "full-to-simple"],
)
def pools(request: pytest.FixtureRequest) -> Iterator[Pools]:
    """Two pools on two loop devices, in the two quota modes; shared by this module's tests."""
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    mode_a, mode_b = request.param
    with loop_pool(prefix="btrfs-csi-send-") as a, loop_pool(prefix="btrfs-csi-receive-") as b:
        yield Pools(Pool.open(a, quota_mode=mode_a.value), Pool.open(b, quota_mode=mode_b.value))


@pytest.fixture(scope="module")
def populated(pools: Pools) -> str:
    """A volume of pool A holding every kind of file a copy can get wrong, and a snapshot of it."""
    pools.a.create_volume("populated", 64 * MiB)
    populate(pools.a.volume_path("populated"))
    return pools.a.create_snapshot("populated-snap", "populated").id


def cli_receive(stream: Path, into: Path) -> None:
    """The oracle: btrfs-progs' own receive."""
    subprocess.run(["btrfs", "receive", "-q", "-f", str(stream), str(into)], check=True, timeout=120)


def test_a_sent_snapshot_received_by_btrfs_progs_is_the_snapshot(
    pools: Pools, populated: str, tmp_path: Path
) -> None:
    stream = tmp_path / "stream"
    with open(stream, "wb") as out:
        sent = pools.a.transfers.send_snapshot(populated, out)
    assert sent == stream.stat().st_size > 3 * MiB
    cli_receive(stream, pools.b.root)
    try:
        received = pools.b.root / populated
        snapshot = pools.a.snapshots_dir / populated
        assert fingerprint(received, METADATA_XATTRS) == fingerprint(snapshot, METADATA_XATTRS)
        assert subvolume.info(received).readonly
    finally:
        subvolume.delete(pools.b.root / populated)


def test_a_send_into_a_file_descriptor_writes_the_same_stream(
    pools: Pools, populated: str, tmp_path: Path
) -> None:
    to_writer = io.BytesIO()
    pools.a.transfers.send_snapshot(populated, to_writer)
    with open(tmp_path / "stream", "wb") as out:
        sent = pools.a.transfers.send_snapshot(populated, out.fileno())
    assert (tmp_path / "stream").read_bytes() == to_writer.getvalue()
    assert sent == len(to_writer.getvalue())


class SlowWriter(io.BytesIO):
    """A sink slower than the kernel: the send waits on a full pipe most of the time."""

    def write(self, data: "bytes | bytearray | memoryview") -> int:  # type: ignore[override]
        time.sleep(0.02)
        return super().write(data)


def test_signals_during_a_send_do_not_restart_its_stream(pools: Pools, populated: str) -> None:
    """A signal that reaches the thread in BTRFS_IOC_SEND while it waits on the pipe would end the ioctl
    (EINTR) or restart it, a second stream begun inside the first; the sending thread blocks them."""
    undisturbed = stream_of(pools.a, populated)
    signals: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda number, frame: signals.append(number))
    out = SlowWriter()
    failures: list[BaseException] = []

    def send() -> None:
        try:
            pools.a.transfers.send_snapshot(populated, out)
        except BaseException as exc:
            failures.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    kills = 0
    try:
        while sender.is_alive():
            for thread in threading.enumerate():
                if thread.name == f"send {populated}" and thread.ident is not None:
                    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                        signal.pthread_kill(thread.ident, signal.SIGUSR1)
                        kills += 1
            time.sleep(0.001)
    finally:
        sender.join()
        signal.signal(signal.SIGUSR1, previous)
    assert kills > 10
    assert failures == []
    assert out.getvalue() == undisturbed


def test_a_volume_is_sent_through_a_temporary_snapshot_that_is_removed(pools: Pools, tmp_path: Path) -> None:
    pools.a.create_volume("sent-live", 64 * MiB)
    (pools.a.volume_path("sent-live") / "file").write_bytes(b"live data\n" * 1000)
    stream = tmp_path / "stream"
    with open(stream, "wb") as out:
        pools.a.transfers.send_volume("sent-live", out)
    assert os.listdir(pools.a.staging_dir) == []
    cli_receive(stream, pools.b.root)
    (received,) = [entry for entry in pools.b.root.iterdir() if entry.name.startswith("sent-live.")]
    try:
        assert (received / "file").read_bytes() == b"live data\n" * 1000
    finally:
        subvolume.delete(received)


class FailingSink:
    def __init__(self, after: int) -> None:
        self.left = after

    def write(self, data: bytes) -> None:
        self.left -= 1
        if self.left < 0:
            raise BrokenPipeError("the receiver went away")


def test_a_failed_volume_send_removes_its_temporary_snapshot(pools: Pools) -> None:
    pools.a.create_volume("send-fails", 64 * MiB)
    (pools.a.volume_path("send-fails") / "file").write_bytes(os.urandom(8 * MiB))
    with pytest.raises(BrokenPipeError):
        pools.a.transfers.send_volume("send-fails", FailingSink(after=1))
    assert os.listdir(pools.a.staging_dir) == []


def test_the_staging_clean_up_leaves_a_send_in_progress_alone(pools: Pools) -> None:
    pools.a.create_volume("send-while-cleaning", 64 * MiB)
    (pools.a.volume_path("send-while-cleaning") / "file").write_bytes(os.urandom(4 * MiB))
    cleanups: list[Debris] = []

    class CleaningSink(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            if not cleanups:
                cleanups.append(pools.a.upkeep.clear_staging())  # what the reconciler does every few seconds
            return super().write(data)

    out = CleaningSink()
    pools.a.transfers.send_volume("send-while-cleaning", out)
    assert cleanups[0].removed == 0 and cleanups[0].left == []
    assert len(out.getvalue()) > 4 * MiB


def test_a_snapshot_being_sent_cannot_be_deleted_until_the_send_ends(pools: Pools) -> None:
    pools.a.create_volume("sent-then-deleted", 64 * MiB)
    (pools.a.volume_path("sent-then-deleted") / "file").write_bytes(os.urandom(4 * MiB))
    snapshot = pools.a.create_snapshot("deleted-while-sent", "sent-then-deleted")
    refusals: list[Exception] = []

    class DeletingSink(io.BytesIO):
        def write(self, data: bytes) -> int:  # type: ignore[override]
            if not refusals:
                with pytest.raises(InUse, match="being sent") as refused:
                    pools.a.delete_snapshot(snapshot.id)
                refusals.append(refused.value)
            return super().write(data)

    pools.a.transfers.send_snapshot(snapshot.id, DeletingSink())
    assert refusals
    pools.a.delete_snapshot(snapshot.id)
    with pytest.raises(NotFound):
        pools.a.get_snapshot(snapshot.id)


def test_only_read_only_snapshots_of_the_pool_are_sent(pools: Pools, populated: str) -> None:
    pool = pools.a
    pool.create_volume("not-a-snapshot", 64 * MiB)
    with pytest.raises(NotFound, match="snapshot not-a-snapshot does not exist"):
        pool.transfers.send_snapshot("not-a-snapshot", io.BytesIO())
    for bad in ("../volumes/not-a-snapshot", "/etc", ""):
        with pytest.raises(InvalidArgument, match="snapshot id"):
            pool.transfers.send_snapshot(bad, io.BytesIO())
    subvolume.snapshot(pool.volume_path("not-a-snapshot"), pool.snapshots_dir / "foreign", readonly=True)
    with pytest.raises(NotFound, match="foreign"):  # a read-only subvolume, but no snapshot of ours
        pool.transfers.send_snapshot("foreign", io.BytesIO())
    pool.create_snapshot("made-writable", "not-a-snapshot")
    subvolume.set_readonly(pool.snapshots_dir / "made-writable", False)
    try:
        with pytest.raises(InvalidArgument, match="not read-only"):
            pool.transfers.send_snapshot("made-writable", io.BytesIO())
    finally:
        subvolume.set_readonly(pool.snapshots_dir / "made-writable", True)
    with pytest.raises(NotFound, match="volume nothing-here does not exist"):
        pool.transfers.send_volume("nothing-here", io.BytesIO())


def send_in_thread(send: Callable[[int], int]) -> tuple[int, threading.Thread]:
    """The reading end of a pipe that a thread fills with send(write_end), closing it afterwards."""
    read_end, write_end = os.pipe()

    def run() -> None:
        try:
            send(write_end)
        except BrokenPipeError:
            pass  # the receiver stopped reading: its own failure is what the test looks at
        finally:
            os.close(write_end)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return read_end, thread


def receive(pools: Pools, name: str, send: Callable[[int], int], source: Source, size: int) -> Volume:
    read_end, thread = send_in_thread(send)
    try:
        return pools.b.transfers.claim(
            pools.b.transfers.receive(name, 0, source, size, read_end, {"csi.storage.k8s.io/pvc/name": name})
        )
    finally:
        os.close(read_end)
        thread.join(timeout=60)


def check_made_like_a_restore(pool: Pool, volume: Volume, capacity: int) -> None:
    """Its own level-1 qgroup, holding its subvolume and carrying the limit; nothing left in staging."""
    assert volume.capacity == capacity
    assert volume.qgroup >> 48 == 1
    assert qgroup_show(pool.root, 1)[volume.qgroup].max_referenced == capacity
    assert pool.stats.volume_usage(volume.id).limit == capacity
    assert volume.qgroup in subvolume_parents_qgroups(pool.root, volume.subvolume_id)
    assert os.listdir(pool.staging_dir) == []
    assert not subvolume.info(pool.volume_path(volume.id)).readonly


def subvolume_parents_qgroups(mount: Path, subvolume_id: int) -> set[int]:
    return quota.relations(mount).get(subvolume_id, set())


def test_a_snapshot_restored_onto_another_pool_is_byte_identical(pools: Pools, populated: str) -> None:
    size = pools.a.get_snapshot(populated).size
    source = Source(SourceKind.SNAPSHOT, populated)
    volume = receive(
        pools, "restored-populated", lambda fd: pools.a.transfers.send_snapshot(populated, fd), source, size
    )
    assert volume.source == source and volume.metadata == {
        "csi.storage.k8s.io/pvc/name": "restored-populated"
    }
    assert pools.b.get_volume("restored-populated") == volume
    check_made_like_a_restore(pools.b, volume, size)
    restored = fingerprint(pools.b.volume_path(volume.id), METADATA_XATTRS)
    assert restored == fingerprint(pools.a.snapshots_dir / populated, METADATA_XATTRS)
    assert restored["shared_extents"] and restored["hard_links"]  # the tree holds what it should


def test_progress_is_told_the_bytes_moved_after_each_chunk(pools: Pools, populated: str) -> None:
    sent: list[int] = []
    received: list[int] = []
    size = pools.a.get_snapshot(populated).size
    read_end, thread = send_in_thread(lambda fd: pools.a.transfers.send_snapshot(populated, fd, sent.append))
    try:
        source = Source(SourceKind.SNAPSHOT, populated)
        pools.b.transfers.claim(
            pools.b.transfers.receive("with-progress", 0, source, size, read_end, progress=received.append)
        )
    finally:
        os.close(read_end)
        thread.join(timeout=60)
    stream = stream_of(pools.a, populated)
    for told in (sent, received):
        assert told == sorted(set(told)) and told[-1] == len(stream)
        assert len(told) > 1 and all(
            b - a <= sendstream.CHUNK_BYTES for a, b in itertools.pairwise([0, *told])
        )


def test_a_restore_is_idempotent_and_reads_no_stream_when_the_volume_exists(
    pools: Pools, populated: str
) -> None:
    size = pools.a.get_snapshot(populated).size
    source = Source(SourceKind.SNAPSHOT, populated)
    first = receive(
        pools, "restored-twice", lambda fd: pools.a.transfers.send_snapshot(populated, fd), source, size
    )
    untouched = UntouchedStream()
    again = pools.b.transfers.claim(
        pools.b.transfers.receive(
            "restored-twice", 0, source, size, untouched, {"csi.storage.k8s.io/pvc/name": "restored-twice"}
        )
    )
    assert again == first and not untouched.read
    with pytest.raises(AlreadyExists):
        pools.b.transfers.claim(
            pools.b.transfers.receive(
                "restored-twice", 0, Source(SourceKind.SNAPSHOT, "other"), size, untouched
            )
        )
    assert not untouched.read


def test_a_volume_cloned_onto_another_pool_through_a_removed_temporary_snapshot(pools: Pools) -> None:
    pools.a.create_volume("clone-source", 32 * MiB)
    write_random(pools.a.volume_path("clone-source") / "data", 5 * MiB, seed=7)
    source = Source(SourceKind.VOLUME, "clone-source")
    volume = receive(
        pools, "cross-clone", lambda fd: pools.a.transfers.send_volume("clone-source", fd), source, 32 * MiB
    )
    check_made_like_a_restore(pools.b, volume, 32 * MiB)
    assert hash_tree(pools.b.volume_path("cross-clone")) == hash_tree(pools.a.volume_path("clone-source"))
    assert os.listdir(pools.a.staging_dir) == []


def test_a_snapshot_whose_source_volume_was_deleted_is_restored(pools: Pools) -> None:
    pools.a.create_volume("gone-source", 32 * MiB)
    write_random(pools.a.volume_path("gone-source") / "data", 3 * MiB, seed=11)
    expected = hash_tree(pools.a.volume_path("gone-source"))
    snapshot = pools.a.create_snapshot("of-gone-source", "gone-source")
    pools.a.delete_volume("gone-source")
    source = Source(SourceKind.SNAPSHOT, snapshot.id)
    receive(
        pools,
        "from-gone-source",
        lambda fd: pools.a.transfers.send_snapshot(snapshot.id, fd),
        source,
        snapshot.size,
    )
    assert hash_tree(pools.b.volume_path("from-gone-source")) == expected


class UntouchedStream:
    """A byte source that records whether anyone read it."""

    def __init__(self) -> None:
        self.read = False

    def __iter__(self) -> Iterator[bytes]:
        self.read = True
        yield b""


def test_capacity_is_refused_before_any_byte_is_read(pools: Pools) -> None:
    source = Source(SourceKind.SNAPSHOT, "far-away")
    untouched = UntouchedStream()
    before = pools.b.available_capacity()
    with pytest.raises(InsufficientCapacity):
        pools.b.transfers.claim(pools.b.transfers.receive("too-big", 64 << 30, source, 64 * MiB, untouched))
    with pytest.raises(CapacityOutOfRange, match="smaller than snapshot far-away"):
        pools.b.transfers.claim(pools.b.transfers.receive("too-small", 16 * MiB, source, 64 * MiB, untouched))
    with pytest.raises(CapacityOutOfRange):
        pools.b.transfers.claim(
            pools.b.transfers.receive("too-small", 0, source, 64 * MiB, untouched, limit=32 * MiB)
        )
    assert not untouched.read
    assert pools.b.available_capacity() == before
    assert os.listdir(pools.b.staging_dir) == []


@pytest.mark.parametrize(
    "stream",
    [b"", b"not a send stream at all", b"btrfs-stream\x00\x01\x00\x00\x00" + bytes(10), b"btrfs-stream\x00"],
    ids=["empty", "garbage", "no-subvol-command", "truncated"],
)
def test_a_stream_that_is_no_full_send_stream_is_refused(pools: Pools, stream: bytes) -> None:
    before = pools.b.available_capacity()
    with pytest.raises(InvalidArgument, match="send stream"):
        pools.b.transfers.claim(
            pools.b.transfers.receive(
                "bad-stream", 0, Source(SourceKind.SNAPSHOT, "x"), 16 * MiB, io.BytesIO(stream)
            )
        )
    assert os.listdir(pools.b.staging_dir) == []
    assert pools.b.available_capacity() == before
    with pytest.raises(NotFound):
        pools.b.get_volume("bad-stream")


def stream_of(pool: Pool, snapshot_id: str) -> bytes:
    whole = io.BytesIO()
    pool.transfers.send_snapshot(snapshot_id, whole)
    return whole.getvalue()


def test_a_stream_cut_short_makes_no_volume(pools: Pools, populated: str) -> None:
    whole = stream_of(pools.a, populated)
    cut = whole[: len(whole) // 2]
    before = pools.b.available_capacity()
    with pytest.raises(BtrfsCoreError, match="btrfs receive exited"):
        pools.b.transfers.claim(
            pools.b.transfers.receive("cut-short", 0, Source(SourceKind.SNAPSHOT, populated), 64 * MiB, [cut])
        )
    assert os.listdir(pools.b.staging_dir) == []
    assert pools.b.available_capacity() == before
    with pytest.raises(NotFound):
        pools.b.get_volume("cut-short")


def test_a_stream_longer_than_its_bound_is_cut_off(pools: Pools, populated: str) -> None:
    whole = stream_of(pools.a, populated)
    landing = pools.b.root / "landing-bound"
    subvolume.create(landing)
    try:
        with pytest.raises(InsufficientCapacity, match="longer than"):
            sendstream.receive(landing, io.BytesIO(whole), sendstream.Meter(MiB, None))
    finally:
        subvolume.delete(landing)


def test_what_a_receive_made_is_checked(pools: Pools, tmp_path: Path) -> None:
    pool = pools.b
    landing = pool.root / "landing-check"
    subvolume.create(landing)
    head = sendstream.StreamHead("sent", uuid.uuid4())
    try:
        with pytest.raises(BtrfsCoreError, match="not the one subvolume"):
            sendstream.check_received(landing, head)  # nothing
        subvolume.create(landing / "sent")
        with pytest.raises(BtrfsCoreError, match="writable"):
            sendstream.check_received(landing, head)
        subvolume.set_readonly(landing / "sent", True)
        with pytest.raises(BtrfsCoreError, match="received UUID None"):
            sendstream.check_received(landing, head)
        (landing / "extra").touch()
        with pytest.raises(BtrfsCoreError, match="not the one subvolume"):
            sendstream.check_received(landing, head)
    finally:
        subvolume.delete(landing)


REPO = Path(__file__).resolve().parents[2]
RECEIVING_CHILD = """
import sys
from btrfs_core.models import Source, SourceKind
from btrfs_core.pool import Pool
root, snapshot_id, size, fd = sys.argv[1:]
source = Source(SourceKind.SNAPSHOT, snapshot_id)
transfers = Pool.open(root).transfers
transfers.claim(transfers.receive("killed-midway", 0, source, int(size), int(fd)))
"""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting, after {timeout} s, for {what}")
        time.sleep(0.05)


def receivers_into(directory: Path) -> list[int]:
    """The pids of the btrfs receive processes writing below directory."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not a process
        if b"receive" in argv and any(arg.startswith(os.fsencode(directory)) for arg in argv):
            found.append(int(entry.name))
    return found


def test_a_receiver_killed_midway_leaves_debris_that_opening_the_pool_clears(
    pools: Pools, populated: str
) -> None:
    stream = stream_of(pools.a, populated)
    size = pools.a.get_snapshot(populated).size
    read_end, write_end = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", RECEIVING_CHILD, str(pools.b.root), populated, str(size), str(read_end)],
        pass_fds=(read_end,),
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    os.close(read_end)
    try:
        os.write(write_end, stream[: len(stream) // 2])  # the pipe holds it all: 64 KiB and more
        staging = pools.b.staging_dir

        def receiving() -> bool:  # a landing subvolume with the received subvolume inside
            return any((staging / entry / populated).exists() for entry in os.listdir(staging))

        wait_for(receiving, "the receive to start writing")
        assert receivers_into(staging)
        child.kill()
        child.wait(timeout=60)
        # The receiver dies with its parent (setpriv --pdeathsig): nothing writes into staging any more.
        wait_for(lambda: not receivers_into(staging), "the btrfs receive process to end")
    finally:
        os.close(write_end)
        child.kill()
        child.wait(timeout=60)
    assert os.listdir(staging)  # the debris
    with pytest.raises(NotFound):
        pools.b.get_volume("killed-midway")
    Pool.open(pools.b.root)
    assert os.listdir(staging) == []
    assert [path for path in subvolume_paths(pools.b.root) if "killed-midway" in path] == []
    source = Source(SourceKind.SNAPSHOT, populated)
    retried = receive(
        pools, "killed-midway", lambda fd: pools.a.transfers.send_snapshot(populated, fd), source, size
    )
    restored = fingerprint(pools.b.volume_path(retried.id), METADATA_XATTRS)
    assert restored == fingerprint(pools.a.snapshots_dir / populated, METADATA_XATTRS)


def test_a_receiver_that_is_not_installed_is_an_error_that_says_so(
    pools: Pools, populated: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = stream_of(pools.a, populated)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BtrfsCoreError, match="cannot run setpriv"):
        pools.b.transfers.claim(
            pools.b.transfers.receive(
                "no-receiver", 0, Source(SourceKind.SNAPSHOT, populated), 64 * MiB, [stream]
            )
        )
    assert os.listdir(pools.b.staging_dir) == []
    with pytest.raises(NotFound):
        pools.b.get_volume("no-receiver")


def test_a_receive_that_answered_survives_a_power_cut(pools: Pools, populated: str, tmp_path: Path) -> None:
    # Expected from the sender: reading the received files first (FIEMAP syncs) would write them out.
    expected = fingerprint(pools.a.snapshots_dir / populated, METADATA_XATTRS)
    size = pools.a.get_snapshot(populated).size
    source = Source(SourceKind.SNAPSHOT, populated)
    volume = receive(
        pools, "power-cut", lambda fd: pools.a.transfers.send_snapshot(populated, fd), source, size
    )
    with power_cut_image(pools.b.root, tmp_path) as disk:
        assert fingerprint(disk / "volumes" / volume.id, METADATA_XATTRS) == expected
        assert os.listdir(disk / ".staging") == []


def test_a_restore_keeps_its_sources_compression_unless_asked_otherwise(pools: Pools) -> None:
    zstd = TuningRequest(compression=Compression.parse("zstd:3"))
    pools.a.create_volume("compressed", 32 * MiB, tuning=zstd)
    write_random(pools.a.volume_path("compressed") / "data", MiB, seed=5)
    snapshot = pools.a.create_snapshot("compressed-snap", "compressed")
    source = Source(SourceKind.SNAPSHOT, snapshot.id)
    kept = receive(
        pools,
        "kept-compression",
        lambda fd: pools.a.transfers.send_snapshot(snapshot.id, fd),
        source,
        snapshot.size,
    )
    assert kept.tuning == Tuning(Compression.parse("zstd:3"))
    assert properties.compression(pools.b.volume_path(kept.id)) == "zstd:3"
    read_end, thread = send_in_thread(lambda fd: pools.a.transfers.send_snapshot(snapshot.id, fd))
    try:
        lzo = TuningRequest(compression=Compression.parse("lzo"))
        changed = pools.b.transfers.claim(
            pools.b.transfers.receive("changed-compression", 0, source, snapshot.size, read_end, tuning=lzo)
        )
    finally:
        os.close(read_end)
        thread.join(timeout=60)
    assert changed.tuning == Tuning(Compression.parse("lzo"))
    assert properties.compression(pools.b.volume_path(changed.id)) == "lzo"
    untouched = UntouchedStream()
    both = TuningRequest(compression=Compression.parse("zstd"), nodatacow=True)
    with pytest.raises(InvalidArgument, match="nodatacow"):
        pools.b.transfers.claim(
            pools.b.transfers.receive("refused-tuning", 0, source, snapshot.size, untouched, tuning=both)
        )
    assert not untouched.read
