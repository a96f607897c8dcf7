"""Per-ID try-locks: a second concurrent call on the same volume, snapshot or target is refused, not queued.

The CSI spec lets a plugin answer ABORTED to a call that overlaps another on the same object; the CO retries
with back-off. Refusing instead of waiting keeps every gRPC worker thread free: a worker blocked behind a
slow mount or delete is a worker lost to all other volumes.
"""

import contextlib
import threading
from collections.abc import Iterator

from csi.errors import aborted


class KeyedTryLock:
    """A set of held keys guarded by one short mutex; holding several keys is all-or-nothing."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held: set[str] = set()

    @contextlib.contextmanager
    def hold(self, *keys: str) -> Iterator[None]:
        """Holds every key for the body, or refuses (ABORTED) naming a key already held."""
        wanted = set(keys)
        with self._mutex:
            busy = sorted(wanted & self._held)
            if busy:
                raise aborted(f"an operation on {busy[0]} is already in progress")
            self._held |= wanted
        try:
            yield
        finally:
            with self._mutex:
                self._held -= wanted


def volume_key(volume_id: str) -> str:
    return f"volume {volume_id}"


def snapshot_key(snapshot_id: str) -> str:
    return f"snapshot {snapshot_id}"


def target_key(target_path: str) -> str:
    return f"target path {target_path}"
