"""The Send stream's message buffers stay in the heap once keep_message_buffers ran (csi/peer/buffers.py):
measured as the page faults of freeing and allocating message-sized buffers, in a process of its own
(malloc's settings are the process's)."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MiB = 1 << 20
PAGES_PER_MIB = MiB // 4096

# What a sending node does per message: the chunk, the framed message, grpc's copy, all freed after.
CHURN = """
import os, resource, sys, threading
from csi.peer.buffers import keep_message_buffers
if sys.argv[1] == "tuned":
    keep_message_buffers()
faults = []
def stream() -> None:
    chunk = os.urandom(1 << 20)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        framed = b"\\x0a" + chunk
        copied = bytes(bytearray(framed))
        del framed, copied
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=stream)  # as grpc's workers do: not the main thread
thread.start()
thread.join()
print(faults[0] / 100)
"""


def faults_per_mib(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", CHURN, mode], cwd=REPO, capture_output=True, text=True, timeout=60, check=True
    )
    return float(done.stdout)


def test_freed_message_buffers_are_reused_without_page_faults() -> None:
    untuned = faults_per_mib("untuned")
    assert untuned >= PAGES_PER_MIB / 2, f"glibc's defaults no longer fault message buffers in: {untuned}"
    tuned = faults_per_mib("tuned")
    assert tuned < PAGES_PER_MIB / 16, f"{tuned} page faults per MiB of message buffers"
