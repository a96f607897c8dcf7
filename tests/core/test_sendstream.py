"""The head of a send stream, read before any byte reaches the receiver (no kernel needed)."""

import struct
import uuid
from pathlib import Path

import pytest

from btrfs_core.errors import InvalidArgument
from btrfs_core.sendstream import StreamHead, read_head

REPO = Path(__file__).resolve().parents[2]
SUBVOL, SNAPSHOT, ATTR_UUID, ATTR_CTRANSID, ATTR_PATH = 1, 2, 1, 2, 15


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("<HH", kind, len(value)) + value


def stream_head(command: int, *attributes: bytes, version: int = 1) -> bytes:
    payload = b"".join(attributes)
    return (
        b"btrfs-stream\x00"
        + struct.pack("<I", version)
        + struct.pack("<IHI", len(payload), command, 0)
        + payload
    )


def test_the_head_names_the_subvolume_and_its_uuid_and_keeps_every_byte_read() -> None:
    sent = uuid.uuid4()
    head = stream_head(
        SUBVOL, tlv(ATTR_PATH, b"snap-1"), tlv(ATTR_UUID, sent.bytes), tlv(ATTR_CTRANSID, bytes(8))
    )
    data = head + b"the commands that follow"
    chunks = iter([data[:5], b"", data[5:20], data[20:]])  # split anywhere, empty chunks too
    found, read = read_head(chunks)
    assert found == StreamHead("snap-1", sent)
    assert read + b"".join(chunks) == data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "ends after 0 bytes"),
        (b"tar archive, not a stream.....", "no btrfs send stream header"),
        (stream_head(SNAPSHOT, tlv(ATTR_PATH, b"s"), tlv(ATTR_UUID, bytes(16))), "not a full stream"),
        (
            stream_head(SUBVOL, tlv(ATTR_PATH, b"../escape"), tlv(ATTR_UUID, bytes(16))),
            "no single directory name",
        ),
        (stream_head(SUBVOL, tlv(ATTR_PATH, b".."), tlv(ATTR_UUID, bytes(16))), "no single directory name"),
        (stream_head(SUBVOL, tlv(ATTR_PATH, b"no-uuid")), "no single directory name"),
        (stream_head(SUBVOL, tlv(ATTR_PATH, b"x") * 2)[:-3], "before its first command"),
        (b"btrfs-stream\x00\x01\x00\x00\x00" + struct.pack("<IHI", 1 << 30, SUBVOL, 0), "a first command of"),
    ],
    ids=["empty", "not-a-stream", "incremental", "path", "dot-dot", "no-uuid", "truncated", "huge-command"],
)
def test_a_head_that_is_no_full_stream_of_one_named_subvolume_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        read_head(iter([data]))


def test_the_image_has_the_receiver() -> None:
    """btrfs receive and setpriv run in the driver's container (sendstream.receive)."""
    packages = {line.split("#")[0].strip() for line in (REPO / "image-packages.txt").read_text().splitlines()}
    assert "btrfs-progs" in packages
    assert "image-packages.txt" in (REPO / "Dockerfile").read_text()
