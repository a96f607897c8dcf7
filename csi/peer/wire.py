"""The Send stream's messages, framed by hand: a SendChunk is one field (1, bytes), so its encoding is a
tag, the data's length as a varint, and the data.

protobuf's own path copies each 1 MiB chunk twice on each side (into the message, then out of it), every
copy into a newly allocated 1 MiB buffer; with grpc's own copies and the TLS, that made the peer path
cost ~2 s of CPU per GiB on each side, measured (docs in the module that runs it: bench/bench_peer.py).
Here the sender joins a 4-byte header to the data (one copy) and the receiver takes a view of the message
grpc delivered (no copy). The bytes on the wire are protobuf's exactly: a message that is not exactly
that one field (an empty chunk, unknown fields) is parsed by protobuf itself.
"""

from csi.pb import peer_pb2

_DATA_TAG = 0x0A  # field 1, wire type 2 (length-delimited)
_MAX_VARINT_BYTES = 10


def encode_chunk(data: bytes) -> bytes:
    """SendChunk(data=data).SerializeToString(), with one copy of data."""
    if not data:
        return b""  # proto3 leaves an empty bytes field out
    return bytes((_DATA_TAG, *_varint(len(data)))) + data


def decode_chunk(message: bytes) -> memoryview:
    """SendChunk.FromString(message).data, as a view into message when it holds nothing else."""
    if message[:1] == bytes((_DATA_TAG,)):
        parsed = _read_varint(message, 1)
        if parsed is not None and parsed[1] + parsed[0] == len(message):
            return memoryview(message)[parsed[1] :]
    return memoryview(peer_pb2.SendChunk.FromString(message).data)


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(message: bytes, position: int) -> tuple[int, int] | None:
    """(the varint at position, the position after it); None when it is not one."""
    value = 0
    for index, byte in enumerate(message[position : position + _MAX_VARINT_BYTES]):
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, position + index + 1
    return None
