"""Object IDs a call is building or deleting outside the pool's lock: one call per ID at a time, and
what the upkeep must take for existing while it is not in place yet."""

import contextlib
import threading
from collections.abc import Iterator


class Claims:
    """The IDs held by calls in progress. Shares the pool's lock (a re-entrant one: a caller holding
    it may claim)."""

    def __init__(self, lock: threading.RLock) -> None:
        self._released = threading.Condition(lock)
        self._held: set[str] = set()

    @contextlib.contextmanager
    def claimed(self, object_id: str) -> Iterator[None]:
        """Holds object_id for the body, once no other call holds it."""
        with self._released:
            self._released.wait_for(lambda: object_id not in self._held)
            self._held.add(object_id)
        try:
            yield
        finally:
            with self._released:
                self._held.discard(object_id)
                self._released.notify_all()

    def held(self) -> list[str]:
        """The IDs held now (needs the lock)."""
        return sorted(self._held)
