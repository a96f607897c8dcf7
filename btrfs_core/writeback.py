"""Writing a received stream's data while it arrives.

A receive leaves its data dirty in memory (a GiB fits under the kernel's background threshold on a
node with some memory), and the volume made from it must wait for all of it to be written: the
writable snapshot flushes its source first. Written only then, a GiB costs a second or more after
the last byte arrived. Flushing in the background as the stream goes, one flush at a time, overlaps
that writing with the transfer, so little is left when the stream ends (bench_peer, bench_transfer).
"""

import logging
import threading
from collections.abc import Callable
from types import TracebackType

from btrfs_core.errors import BtrfsCoreError

log = logging.getLogger(__name__)

FLUSH_BYTES = 64 << 20  # a flush is due after this many more bytes; one runs at a time, back to back


class Writeback:
    """A thread that calls `flush` (write the pool's dirty data) once `every` more bytes have arrived
    since the last one was due; a flush that is still running when more are due is followed by one
    more, never by several. Leaving the context waits for the flush in progress."""

    def __init__(self, flush: Callable[[], None], every: int = FLUSH_BYTES) -> None:
        self._flush = flush
        self._every = every
        self._next = every
        self._due = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="writeback", daemon=True)

    def __enter__(self) -> "Writeback":
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stopping = True
        self._due.set()
        self._thread.join()

    def moved(self, total: int) -> None:
        """Told the bytes that arrived so far (a sendstream Progress)."""
        if total >= self._next:
            self._next = total + self._every
            self._due.set()

    def _run(self) -> None:
        while True:
            self._due.wait()
            if self._stopping:
                return
            self._due.clear()
            try:
                self._flush()
            except BtrfsCoreError as exc:  # only a head start: the volume's own commit reports failures
                log.debug("writeback: %s", exc)
