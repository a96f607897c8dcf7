"""Per-volume tuning on the real kernel: compression charged to the qgroup, nodatacow on the files a pod
writes, compression changed on a published volume while its pod writes, and every refusal."""

import errno
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from btrfs_core import filesystem, properties
from btrfs_core.errors import AlreadyExists, InsufficientCapacity, InvalidArgument, NotFound
from btrfs_core.models import NO_TUNING, Algorithm, Compression, Source, SourceKind, Tuning, TuningRequest
from btrfs_core.pool import Pool
from btrfs_core.publish import Publisher
from tests.tenant import as_pod, hand_to_pod

pytestmark = pytest.mark.kernel

MiB = 1 << 20
ZSTD = Compression(Algorithm.ZSTD)
COMPRESSIBLE = b"btrfs-csi compresses this line well\n" * (MiB // 36 + 1)


@pytest.fixture
def pool(btrfs_mount: Path) -> Pool:
    return Pool.open(btrfs_mount)


def write_compressible(name: str, size: int) -> int:
    with open(name, "wb") as f:
        written = 0
        while written < size:
            written += f.write(COMPRESSIBLE[: min(MiB, size - written)])
        os.fsync(f.fileno())
    return written


def charged(pool: Pool, volume_id: str) -> int:
    filesystem.sync(pool.root)  # qgroup counters move at commit
    return pool.stats.volume_usage(volume_id).referenced


def test_compressed_writes_charge_fewer_bytes_than_written(pool: Pool) -> None:
    plain = pool.create_volume("pvc-plain", 128 * MiB)
    packed = pool.create_volume("pvc-zstd", 128 * MiB, tuning=TuningRequest(compression=ZSTD))
    assert packed.tuning == Tuning(ZSTD) and pool.get_volume(packed.id).tuning == Tuning(ZSTD)
    assert properties.compression(pool.volume_path(packed.id)) == "zstd"
    assert properties.compression(pool.volume_path(plain.id)) is None
    written = {}
    for volume in (plain, packed):
        hand_to_pod(pool.volume_path(volume.id))
        written[volume.id] = as_pod(pool.volume_path(volume.id), lambda: write_compressible("data", 64 * MiB))
    assert charged(pool, plain.id) >= written[plain.id]
    # 64 MiB of repeated text: zstd stores it in a few MiB (2.1 MiB measured on 6.18).
    assert charged(pool, packed.id) < written[packed.id] // 8


def write_nested_file() -> int:
    os.makedirs("db/pages")
    return write_compressible("db/pages/table", MiB)


def test_nodatacow_files_written_by_the_pod_carry_the_flag(pool: Pool) -> None:
    volume = pool.create_volume("pvc-db", 32 * MiB, tuning=TuningRequest(nodatacow=True))
    path = pool.volume_path(volume.id)
    assert pool.get_volume(volume.id).tuning == Tuning(None, nodatacow=True)
    hand_to_pod(path)
    as_pod(path, write_nested_file)
    assert properties.nodatacow(path)
    assert properties.nodatacow(path / "db" / "pages" / "table")
    plain = pool.create_volume("pvc-cow", 32 * MiB)
    (pool.volume_path(plain.id) / "file").write_bytes(b"x")
    assert not properties.nodatacow(pool.volume_path(plain.id) / "file")


def test_a_restore_or_clone_keeps_its_sources_tuning_unless_it_asks_for_its_own(pool: Pool) -> None:
    source = pool.create_volume("pvc-src", 16 * MiB, tuning=TuningRequest(compression=ZSTD))
    snapshot = pool.create_snapshot("snap-src", source.id)
    assert snapshot.tuning == Tuning(ZSTD)
    kept = pool.create_volume("pvc-kept", 16 * MiB, Source(SourceKind.SNAPSHOT, snapshot.id))
    assert kept.tuning == Tuning(ZSTD) and properties.compression(pool.volume_path(kept.id)) == "zstd"
    lzo = Compression(Algorithm.LZO)
    own = pool.create_volume(
        "pvc-own", 16 * MiB, Source(SourceKind.VOLUME, source.id), tuning=TuningRequest(lzo)
    )
    assert own.tuning == Tuning(lzo) and properties.compression(pool.volume_path(own.id)) == "lzo"
    # nodatacow asked of a clone of a compressed volume: the source's compression goes (the kernel
    # refuses NOCOW on a directory with a compression property).
    nocow = pool.create_volume(
        "pvc-nocow", 16 * MiB, Source(SourceKind.VOLUME, source.id), tuning=TuningRequest(nodatacow=True)
    )
    assert nocow.tuning == Tuning(None, nodatacow=True)
    assert properties.nodatacow(pool.volume_path(nocow.id))
    assert properties.compression(pool.volume_path(nocow.id)) is None
    # ... and a clone of that one with compression again, nodatacow off
    back = pool.create_volume(
        "pvc-back", 16 * MiB, Source(SourceKind.VOLUME, nocow.id), tuning=TuningRequest(ZSTD, nodatacow=False)
    )
    assert not properties.nodatacow(pool.volume_path(back.id))
    assert properties.compression(pool.volume_path(back.id)) == "zstd"


def test_refusals_leave_nothing_behind(pool: Pool) -> None:
    nocow = pool.create_volume("pvc-nocow", 16 * MiB, tuning=TuningRequest(nodatacow=True))
    before = sorted(os.listdir(pool.volumes_dir)), sorted(os.listdir(pool.staging_dir))
    # a clone of a nodatacow volume asking for compression: the pair the kernel refuses
    with pytest.raises(InvalidArgument, match="nodatacow"):
        pool.create_volume("pvc-x", 16 * MiB, Source(SourceKind.VOLUME, nocow.id), tuning=TuningRequest(ZSTD))
    with pytest.raises(InvalidArgument, match="nodatacow"):
        pool.create_volume("pvc-y", 16 * MiB, tuning=TuningRequest(ZSTD, nodatacow=True))
    # a repeated create with other parameters
    with pytest.raises(AlreadyExists, match="other parameters"):
        pool.create_volume("pvc-nocow", 16 * MiB)
    assert pool.create_volume("pvc-nocow", 16 * MiB, tuning=TuningRequest(nodatacow=True)) == nocow
    # a modify the kernel would refuse, and one of a volume that does not exist
    with pytest.raises(InvalidArgument, match="nodatacow"):
        pool.modify_volume(nocow.id, ZSTD)
    with pytest.raises(NotFound):
        pool.modify_volume("pvc-absent", ZSTD)
    assert (sorted(os.listdir(pool.volumes_dir)), sorted(os.listdir(pool.staging_dir))) == before
    assert pool.get_volume(nocow.id).tuning == Tuning(None, nodatacow=True)
    # compression none goes with nodatacow: nothing to set, the kernel never compresses it anyway
    none = Compression(Algorithm.NONE)
    assert pool.modify_volume(nocow.id, none).tuning == Tuning(none, nodatacow=True)


def test_a_full_volume_cannot_store_a_new_compression(pool: Pool) -> None:
    volume = pool.create_volume("pvc-full", 8 * MiB)
    path = pool.volume_path(volume.id)
    hand_to_pod(path)
    result = as_pod(path, lambda: fill("data"))
    assert result == errno.EDQUOT
    with pytest.raises(InsufficientCapacity, match="full to its limit"):
        pool.modify_volume(volume.id, ZSTD)
    assert pool.get_volume(volume.id).tuning == NO_TUNING
    assert properties.compression(path) is None


def fill(name: str) -> int:
    with open(name, "wb") as f:
        try:
            while True:
                f.write(os.urandom(MiB))
                f.flush()
        except OSError as exc:
            return exc.errno or 0


@pytest.fixture
def target() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="tuning-target-"))
    yield directory / "mount"
    if (directory / "mount").exists():
        (directory / "mount").rmdir()
    directory.rmdir()


def test_modify_changes_the_compression_of_a_published_volume_while_its_pod_writes(
    pool: Pool, target: Path
) -> None:
    volume = pool.create_volume("pvc-live", 256 * MiB)
    hand_to_pod(pool.volume_path(volume.id))
    publisher = Publisher(pool)
    publisher.publish(volume.id, target, readonly=False, exclusive=True)
    try:
        modified = target / "modified"  # made by the test once the modify has answered

        def pod() -> list[str]:
            names, i = [], 0
            while True:
                done = os.path.exists("modified")  # read before the write: this file may start after
                names.append(f"file-{i}")
                write_compressible(names[-1], 4 * MiB)
                i += 1
                if done:
                    return names

        result: list[list[str]] = []
        writer = threading.Thread(target=lambda: result.append(as_pod(target, pod)))
        writer.start()
        deadline = time.monotonic() + 60
        while not (target / "file-1").exists():  # the pod is writing
            assert time.monotonic() < deadline and writer.is_alive(), "the pod did not start writing"
            time.sleep(0.01)
        assert pool.modify_volume(volume.id, ZSTD).tuning == Tuning(ZSTD)
        assert pool.modify_volume(volume.id, ZSTD).tuning == Tuning(ZSTD)  # idempotent
        assert properties.compression(target) == "zstd"
        modified.touch()
        writer.join(120)
        assert not writer.is_alive() and result, "the pod did not finish"
        names = result[0]
        # The last file was started after the modify answered: it inherited the property.
        assert properties.compression(target / names[-1]) == "zstd"
        assert properties.compression(target / names[0]) is None
        assert all((target / name).read_bytes() == COMPRESSIBLE[:MiB] * 4 for name in names)
        assert pool.get_volume(volume.id).tuning == Tuning(ZSTD)
    finally:
        publisher.unpublish(volume.id, target)
