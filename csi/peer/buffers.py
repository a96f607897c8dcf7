"""glibc's malloc and the Send stream's 1 MiB messages.

Each message passes through newly allocated buffers of 1 MiB on both nodes (the chunk read from the
pipe, the framed message, grpc's copies of it). glibc takes buffers this large from mmap, or trims them
off the heap once freed (its thresholds adapt only up to about one such buffer), so the next buffer's
pages are faulted in and zeroed again: ~300,000 page faults per GiB on the sending node and a third of
its CPU, measured with bench/bench_peer.py. With both thresholds above what a stream holds at once the
freed buffers stay in the heap: ~30,000 faults per GiB. The cost: up to TRIM_THRESHOLD_BYTES of freed
memory kept by each malloc arena (one per busy thread at most). Without glibc (no mallopt), nothing
changes but the speed.
"""

import ctypes
import logging

log = logging.getLogger("csi.peer")

_M_TRIM_THRESHOLD = -1  # <malloc.h>
_M_MMAP_THRESHOLD = -3
# Above a message (1 MiB) and grpc's 4 MiB message limit: message buffers come from the heap.
MMAP_THRESHOLD_BYTES = 4 << 20
# A node holds ~3 message buffers at once per stream (read, framed, grpc's copy); twice that, so freeing
# them never trims the heap.
TRIM_THRESHOLD_BYTES = 8 << 20


def keep_message_buffers() -> None:
    """Makes freed message-sized buffers stay in the heap of this process, for the next message."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        log.info("no mallopt in this C library: message buffers are left to its defaults")
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
