"""The metadata codec: versioned on write, old metadata (no version field) still read, a newer
version refused as a failure, not taken for "not ours"."""

import json
from pathlib import Path

import pytest

from btrfs_core import metadata
from btrfs_core.errors import BtrfsCoreError, NotFound


def test_metadata_is_written_with_its_version() -> None:
    fields = json.loads(metadata.encode(metadata.snapshot_fields("snap", "pvc-a", 1 << 20)))
    assert fields == {
        "version": metadata.VERSION,
        "kind": "snapshot",
        "name": "snap",
        "source_volume_id": "pvc-a",
        "size": 1 << 20,
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
