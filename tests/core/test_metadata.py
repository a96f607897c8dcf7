"""The metadata codec: versioned on write, old metadata (no version field) still read, a newer
version refused as a failure, not taken for "not ours"."""

import json
from pathlib import Path

import pytest

from btrfs_core import metadata
from btrfs_core.errors import BtrfsCoreError, NotFound
from btrfs_core.models import NO_TUNING, Algorithm, Compression, Tuning


def test_metadata_is_written_with_its_version() -> None:
    fields = json.loads(metadata.encode(metadata.snapshot_fields("snap", "pvc-a", 1 << 20)))
    assert fields == {
        "version": metadata.VERSION,
        "kind": "snapshot",
        "name": "snap",
        "source_volume_id": "pvc-a",
        "size": 1 << 20,
        "tuning": {"compression": None, "nodatacow": False},
    }


def test_metadata_without_a_version_reads_as_version_one() -> None:
    old = {"kind": "volume", "name": "pvc-old", "capacity": 1 << 20, "source": None, "metadata": {}}
    assert metadata.decode(json.dumps(old).encode(), Path("volumes/pvc-old")) == old


def test_metadata_of_a_newer_version_is_a_failure_not_absence() -> None:
    newer = json.dumps({"version": metadata.VERSION + 1, "kind": "volume"}).encode()
    with pytest.raises(BtrfsCoreError, match="newer") as raised:
        metadata.decode(newer, Path("volumes/pvc-new"))
    assert not isinstance(raised.value, NotFound)


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b"\xff"])
def test_what_is_not_metadata_of_ours_is_not_found(raw: bytes) -> None:
    with pytest.raises(NotFound):
        metadata.decode(raw, Path("volumes/alien"))


def test_metadata_written_before_tuning_reads_as_no_tuning() -> None:
    old = {"version": 1, "kind": "volume", "name": "pvc-old", "capacity": 1 << 20, "qgroup": 1 << 48}
    assert metadata.tuning_of(metadata.decode(json.dumps(old).encode(), Path("volumes/pvc-old"))) == NO_TUNING


@pytest.mark.parametrize(
    "tuning",
    [
        Tuning(Compression(Algorithm.ZSTD, 15)),
        Tuning(Compression(Algorithm.LZO)),
        Tuning(None, nodatacow=True),
    ],
)
def test_tuning_reads_back_as_written(tuning: Tuning) -> None:
    fields = metadata.volume_fields("pvc-a", 1 << 20, 1 << 48, None, {}, tuning)
    raw = metadata.encode(fields)
    assert json.loads(raw)["version"] == 1  # an optional field: metadata older drivers still read
    assert metadata.tuning_of(metadata.decode(raw, Path("volumes/pvc-a"))) == tuning
