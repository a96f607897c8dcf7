"""The Send stream's hand framing (csi/peer/wire.py) is protobuf's SendChunk encoding exactly."""

import pytest
from google.protobuf.message import DecodeError

from csi.pb import peer_pb2
from csi.peer.wire import decode_chunk, encode_chunk

# Lengths at each varint size boundary, and a whole message of the stream.
SIZES = [0, 1, 127, 128, 16_383, 16_384, 1 << 20, (1 << 21) + 3]


@pytest.mark.parametrize("size", SIZES)
def test_encoding_is_protobufs(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    assert encode_chunk(data) == peer_pb2.SendChunk(data=data).SerializeToString()


@pytest.mark.parametrize("size", SIZES)
def test_decoding_gives_the_data(size: int) -> None:
    data = b"\x0a\x80" * (size // 2) + b"x" * (size % 2)
    message = peer_pb2.SendChunk(data=data).SerializeToString()
    assert bytes(decode_chunk(message)) == data


def test_a_message_with_more_than_the_data_field_is_parsed_by_protobuf() -> None:
    unknown_field = b"\x10\x05"  # field 2, varint 5: a newer sender's
    message = encode_chunk(b"abc") + unknown_field
    assert bytes(decode_chunk(message)) == b"abc"
    repeated = encode_chunk(b"old") + encode_chunk(b"new")  # protobuf: the last one wins
    assert bytes(decode_chunk(repeated)) == b"new"


@pytest.mark.parametrize(
    "message",
    [b"\x0a\x05abc", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0a"],
    ids=["short", "overlong-varint", "no-length"],
)
def test_a_broken_message_is_refused(message: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_chunk(message)
