"""Send streams: the kernel serialises a read-only subvolume (BTRFS_IOC_SEND, stream version 1,
always a full stream) into a pipe that a thread of ours drains into the caller's sink; `btrfs receive`
rebuilds one, confined to a directory of its own."""

import contextlib
import errno
import fcntl
import functools
import os
import signal
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable
from uuid import UUID

from btrfs_core import ioctl, subvolume
from btrfs_core.errors import BtrfsCoreError, InsufficientCapacity, InvalidArgument
from btrfs_core.subvolume import opened

CHUNK_BYTES = 1 << 20  # one pipe's worth: the kernel fills it while the sink takes the previous one


class Writer(Protocol):
    def write(self, data: bytes, /) -> object: ...


Sink = int | Writer  # a file descriptor, or anything with write(bytes)
Chunk = bytes | memoryview  # a view: a network message's payload, passed on without a copy
Progress = Callable[[int], None]  # told the bytes moved so far, after each chunk (up to CHUNK_BYTES)


class Meter:
    """Counts the bytes a transfer moved: tells `progress` after each chunk, and refuses a stream
    past max_bytes (InsufficientCapacity)."""

    def __init__(self, max_bytes: int | None, progress: Progress | None) -> None:
        self.total = 0
        self._max_bytes = max_bytes
        self._progress = progress

    def add(self, moved: int) -> None:
        self.total += moved
        if self._max_bytes is not None and self.total > self._max_bytes:
            raise InsufficientCapacity(
                f"send stream: longer than {self._max_bytes} bytes, more than the volume can take"
            )
        if self._progress is not None:
            self._progress(self.total)


def send(path: Path, out: Sink, progress: Progress | None = None) -> int:
    """Streams the read-only subvolume at path into out; returns the bytes written.

    The ioctl blocks until the kernel has written the whole stream, so it runs in a thread that writes
    into a pipe while this one copies the pipe into out. A sink that fails ends the send: the pipe's
    reading end closes, the kernel's next write fails (EPIPE) and the ioctl returns.
    """
    with opened(path) as subvolume:
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        enlarge_pipe(write_end)
        failures: list[BaseException] = []

        def kernel_send() -> None:
            # A signal delivered to this thread while the kernel waits on the pipe ends the ioctl with
            # ERESTARTSYS, and a restarted send begins the stream again in the middle of the first: the
            # receiver sees a corrupt stream. Process signals go to the other threads instead.
            signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
            try:
                args = ioctl.SendArgs(send_fd=write_end)
                ioctl.call(subvolume, ioctl.IOC_SEND, args, "send", str(path))
            except BaseException as exc:  # raised in the calling thread below
                failures.append(exc)
            finally:
                os.close(write_end)  # the copy below reads the end of the stream

        sender = threading.Thread(target=kernel_send, name=f"send {path.name}", daemon=True)
        sender.start()
        try:
            meter = Meter(None, progress)
            _copy(read_end, out, meter)
        finally:
            os.close(read_end)
            sender.join()
    if failures:
        raise failures[0]
    return meter.total


def enlarge_pipe(fd: int) -> None:
    """A pipe of CHUNK_BYTES: fewer wake-ups of reader and writer (the default 64 KiB works too)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK_BYTES)


def _copy(source: int, out: Sink, meter: Meter) -> None:
    """Copies the pipe `source` into out until its end: moved by the kernel (splice) into a file
    descriptor, read into memory for a writer."""
    if isinstance(out, int):
        _splice_all(source, out, meter)
        return
    while chunk := os.read(source, CHUNK_BYTES):
        out.write(chunk)
        meter.add(len(chunk))


def _splice_all(source: int, out: int, meter: Meter) -> None:
    """Moves bytes from source to out, one of them a pipe, until source ends. Where splice(2) cannot
    serve (EINVAL: a file opened for appending, a terminal), reads and writes."""
    while True:
        try:
            moved = os.splice(source, out, CHUNK_BYTES)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            chunk = os.read(source, CHUNK_BYTES)
            moved = len(chunk)
            _write_all(out, chunk)
        if moved == 0:
            return
        meter.add(moved)


def _write_all(fd: int, data: Chunk) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# The receive side.
#
# `btrfs receive` (btrfs-progs) as a subprocess, not a parser of our own. Measured by
# bench/bench_transfer.py (1 GiB snapshot, to disk): this whole path runs at 0.93x a local `btrfs send |
# btrfs receive` pipe, and a Python loop doing nothing but the stream's writes at 0.99x: the work is
# disk-bound, so a parser of our own would gain no speed, only the whole format to get right (22 commands
# in version 1, more in 2 and 3, clones that find their source by UUID, paths that must not leave the
# destination), which btrfs-progs, the kernel developers' reference receiver, has had right for years.
# A process start (~5 ms) is nothing next to the bytes of this rare path; the hot paths stay ioctl-only.
# The process is confined: chrooted into a subvolume of its own in staging (--chroot), one stream and
# no more (-e), killed with the thread that started it (setpriv --pdeathsig), and what it made is checked
# before the pool uses it (check_received). Bytes move by splice(2) where the source is a descriptor.

_MAGIC = b"btrfs-stream\x00"
_STREAM_HEADER = struct.Struct("<13sI")  # magic, version
_COMMAND_HEADER = struct.Struct("<IHI")  # payload length, command, crc32c
_TLV_HEADER = struct.Struct("<HH")  # attribute type, length
_CMD_SUBVOL = 1  # a full stream's first command: a new subvolume (2, SNAPSHOT, starts an incremental one)
_ATTR_UUID, _ATTR_PATH = 1, 15
_MAX_COMMAND_BYTES = 1 << 17  # a subvol command holds a path, a UUID and a transid
_FINISH_SECONDS = 300  # after the last byte: the receiver sets the received UUID and the read-only flag
_ERROR_TAIL_BYTES = 2048


@runtime_checkable
class Reader(Protocol):
    def read(self, size: int, /) -> bytes: ...


ByteSource = int | Reader | Iterable[Chunk]  # a file descriptor, anything with read(n), or chunks


@dataclass(frozen=True)
class StreamHead:
    """What a full send stream says of itself before any data: the subvolume it makes."""

    name: str
    uuid: UUID  # of the subvolume that was sent: the received one carries it as its received UUID


def receive(directory: Path, stream: ByteSource, meter: Meter) -> Path:
    """Receives one full send stream into `directory` (empty, its own) and returns the received
    subvolume, checked: exactly one read-only subvolume, named and received-UUID'd as the stream says,
    holding no other subvolume, and nothing else in `directory`. The meter counts the bytes and cuts
    off a stream longer than it allows (InsufficientCapacity). On any failure what was received stays
    in `directory`, for the caller to remove. A receive lasts as long as its stream: ending the stream
    (a source that raises, a descriptor shut down) ends it."""
    chunks = _chunks(stream)
    head, start = read_head(chunks)
    with tempfile.TemporaryFile() as errors:
        argv = ["setpriv", "--pdeathsig", "KILL", "btrfs", "receive", "-q", "-e", "--chroot", str(directory)]
        try:
            process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors, close_fds=True
            )
        except OSError as exc:  # not installed: the image has both (image-packages.txt)
            raise BtrfsCoreError(f"receive: cannot run {argv[0]}: {exc}") from None
        try:
            assert process.stdin is not None
            with process.stdin:
                enlarge_pipe(process.stdin.fileno())
                rest = stream if isinstance(stream, int) else chunks
                _feed(process.stdin.fileno(), start, rest, meter)
            code = process.wait(timeout=_FINISH_SECONDS)
        except BaseException:
            process.kill()
            process.wait()
            raise
        if code != 0:
            errors.seek(0)
            raise _receive_error(code, errors.read()[-_ERROR_TAIL_BYTES:].decode(errors="replace"))
    return check_received(directory, head)


def _chunks(stream: ByteSource) -> Iterator[Chunk]:
    if isinstance(stream, int):
        return iter(functools.partial(os.read, stream, CHUNK_BYTES), b"")
    if isinstance(stream, Reader):
        return iter(functools.partial(stream.read, CHUNK_BYTES), b"")
    return iter(stream)


def read_head(chunks: Iterator[Chunk]) -> tuple[StreamHead, bytes]:
    """The stream's head, and every byte read from chunks to find it (to be sent on first)."""
    buffered = bytearray()

    def take(size: int) -> None:
        while len(buffered) < size:
            chunk = next(chunks, None)  # an empty chunk is no end: a message stream may carry one
            if chunk is None:
                raise InvalidArgument(
                    f"send stream: ends after {len(buffered)} bytes, before its first command"
                )
            buffered.extend(chunk)

    take(_STREAM_HEADER.size + _COMMAND_HEADER.size)
    magic, version = _STREAM_HEADER.unpack_from(buffered)
    if magic != _MAGIC:
        raise InvalidArgument("send stream: no btrfs send stream header")
    length, command, _crc = _COMMAND_HEADER.unpack_from(buffered, _STREAM_HEADER.size)
    if command != _CMD_SUBVOL:
        raise InvalidArgument(f"send stream: version {version}, first command {command}: not a full stream")
    if length > _MAX_COMMAND_BYTES:
        raise InvalidArgument(f"send stream: a first command of {length} bytes")
    begin = _STREAM_HEADER.size + _COMMAND_HEADER.size
    take(begin + length)
    attributes = {}
    position = begin
    while position + _TLV_HEADER.size <= begin + length:
        kind, size = _TLV_HEADER.unpack_from(buffered, position)
        position += _TLV_HEADER.size
        attributes[kind] = bytes(buffered[position : position + size])
        position += size
    name = os.fsdecode(attributes.get(_ATTR_PATH, b""))
    raw_uuid = attributes.get(_ATTR_UUID, b"")
    if not name or "/" in name or name in (".", "..") or len(raw_uuid) != 16:
        raise InvalidArgument(
            f"send stream: its subvolume {name[:80]!r} is no single directory name with a UUID"
        )
    return StreamHead(name, UUID(bytes=raw_uuid)), bytes(buffered)


def _feed(fd: int, start: bytes, rest: int | Iterator[Chunk], meter: Meter) -> None:
    """Writes start, then the rest of the stream, into fd until it ends or the reader goes away (its
    exit status then says why)."""
    try:
        meter.add(len(start))
        _write_all(fd, start)
        if isinstance(rest, int):
            _splice_all(rest, fd, meter)
            return
        for chunk in rest:
            meter.add(len(chunk))
            _write_all(fd, chunk)
    except BrokenPipeError:
        return


def _receive_error(code: int, stderr: str) -> BtrfsCoreError:
    detail = f"btrfs receive exited with {code}: {stderr.strip() or 'no message'}"
    if "No space left" in stderr or "Disk quota exceeded" in stderr:
        return InsufficientCapacity(f"receive: {detail}")
    return BtrfsCoreError(f"receive: {detail}")


def check_received(directory: Path, head: StreamHead) -> Path:
    """The subvolume a receive made in directory, if it is exactly what the stream announced."""
    made = sorted(os.listdir(directory))
    path = directory / head.name
    if made != [head.name] or not subvolume.is_subvolume(path):
        raise BtrfsCoreError(f"receive: made {made[:5]} in {directory}, not the one subvolume {head.name!r}")
    info = subvolume.info(path)
    if not info.readonly or info.received_uuid != head.uuid:
        state = "read-only" if info.readonly else "writable"
        raise BtrfsCoreError(
            f"receive: subvolume {head.name!r} is {state} with received UUID {info.received_uuid}, "
            f"not read-only with {head.uuid}"
        )
    nested = subvolume.nested_paths(path)
    if nested:
        raise BtrfsCoreError(f"receive: subvolume {head.name!r} holds subvolumes: {nested[:5]}")
    return path
