"""The group commit: a mutating call answers only after its change is on disk, and concurrent calls
share one transaction commit instead of queueing one each.

Why commits are kicked: BTRFS_IOC_START_SYNC asks the filesystem's transaction kthread to commit (a
flag, and a wakeup) and returns once that commit has started. A wakeup that reaches the kthread while
it is busy (committing the transaction before: one asked for by anyone, a tenant too, or the periodic
one) is lost: the kthread then sleeps for the commit interval (30 s) with the flag set, and every
START_SYNC waits with it. Measured on 6.18: the callers' kernel stacks in
btrfs_commit_transaction_async, the kthread asleep in transaction_kthread; one more START_SYNC from
anyone releases them all. A pod calling START_SYNC in a loop stalled one create for 31 s that way.
So while a START_SYNC has not returned, another one is issued every KICK_AFTER seconds, once no commit
is in progress: the kthread writing one cannot hear a kick, and a kick blocks until the commit it asks
for starts, so each needs a thread of its own (a kicker waiting for its own kick, its wakeup lost too,
stalled with the caller). Sent regardless, kicks piled up as blocked threads for as long as a tenant's
commit was written (the stall test: up to 15 at once, the longest blocked 0.33 s; gated, 1).
"""

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

# Longer than START_SYNC takes when nothing is lost (the kthread starts the commit within a few ms,
# tens under heavy load: a kick then is one more START_SYNC that attaches to a commit starting anyway).
KICK_AFTER = 0.02


class GroupCommit:
    """Commits on behalf of every caller whose change is in a transaction the commit covers.

    A change is in a transaction no later than the filesystem's generation read after it (`generation`:
    the running transaction's id, or the last one's). A caller whose mark a finished commit covers
    returns at once; otherwise one caller at a time commits (`commit`: the id of the transaction it
    committed, every earlier one being on disk too) while the others wait for it. Marks group callers
    as the kernel groups their changes: everyone whose change made it into the transaction shares its
    commit, also those who asked after it started (tickets taken in the order callers ask covered
    2-3 creates per commit under 16 clients; marks, 10-12). One START_SYNC at a time: it is asked
    only once the previous commit has ended, when the kthread is idle and gets its wakeup (see above).
    """

    def __init__(self, generation: Callable[[], int], commit: Callable[[], int]) -> None:
        self._generation = generation
        self._commit = commit
        self._changed = threading.Condition()
        self._committed = 0  # every transaction up to this one is on disk
        self._committing = False  # a caller is committing for everyone

    def commit(self) -> None:
        mark = self._generation()
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._committed >= mark or not self._committing)
                if self._committed >= mark:
                    return
                self._committing = True
            committed = 0
            try:
                committed = self._commit()
            finally:
                with self._changed:
                    self._committing = False
                    self._committed = max(self._committed, committed)
                    self._changed.notify_all()


class Kicks:
    """Runs a call's `kick` every `after` seconds for as long as the call has not returned, each in a
    thread of its own (it blocks), but only once `quiet` has returned: it waits while a commit is in
    progress. One watcher thread serves every call; it sleeps while none is watched and polls every
    `after` seconds while some are, so a call costs it no wakeup. While it waits in one call's `quiet`
    (a commit in progress on that filesystem), kicks for calls on other filesystems wait too, as long as
    that commit takes; the driver serves one pool."""

    def __init__(self, after: float = KICK_AFTER) -> None:
        self._after = after
        self._changed = threading.Condition()
        # key -> (next kick due, kick, quiet)
        self._watched: dict[int, tuple[float, Callable[[], None], Callable[[], None]]] = {}
        self._keys = 0
        self._idle = True  # the watcher waits for a call to watch (or has not started)
        self._watcher: threading.Thread | None = None

    @contextlib.contextmanager
    def watching(self, kick: Callable[[], None], quiet: Callable[[], None]) -> Iterator[None]:
        with self._changed:
            self._keys += 1
            key = self._keys
            self._watched[key] = (time.monotonic() + self._after, kick, quiet)
            if self._idle:
                self._idle = False
                if self._watcher is None:
                    self._watcher = threading.Thread(target=self._watch, name="commit-kicks", daemon=True)
                    self._watcher.start()
                self._changed.notify()
        try:
            yield
        finally:
            with self._changed:
                del self._watched[key]

    def _watch(self) -> None:
        while True:
            with self._changed:
                if self._idle or not self._watched:
                    self._idle = True
                    self._changed.wait_for(lambda: not self._idle)
                    continue
                self._changed.wait(self._after)
                now = time.monotonic()
                due = [(key, quiet) for key, (at, _kick, quiet) in self._watched.items() if at <= now]
            for key, quiet in due:
                quiet()  # outside the lock: a call returning meanwhile must not wait for the watcher
                with self._changed:
                    if key not in self._watched:
                        continue
                    _at, kick, _quiet = self._watched[key]
                    self._watched[key] = (time.monotonic() + self._after, kick, quiet)
                threading.Thread(target=kick, name="commit-kick", daemon=True).start()


KICKS = Kicks()
