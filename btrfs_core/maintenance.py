"""The reconciler: a background thread that keeps a pool's quota accounting and staging area clean,
running the pool's upkeep (`Pool.upkeep`, btrfs_core/upkeep.py).

Each round, every `interval` seconds (60 by default):

1. Inconsistent qgroups (full qgroups only; deleting big subvolumes can cause it, and then limits are
   not enforced): start a rescan unless one runs. Simple quotas have no rescan (the kernel refuses
   it, logging "qgroup rescan init failed, running in simple mode"), so none is tried there.
2. Stale qgroups (`stale_qgroups()`): count them, and remove those the kernel lets go (the others
   answer EBUSY and are counted again next time).
3. Crash debris (staging entries, half-made snapshots): `clear_staging()`. An entry that resists is
   logged and left for the next round.
4. Volumes deleted behind the driver's back (a subvolume deleted by hand): their capacity is released
   (`release_vanished_volumes()`), or it would stay promised until a restart.
5. Volume quotas (`repair_quotas()`): the capacity in each volume's metadata is the truth. A level-1
   qgroup that is gone (quotas turned off and on again) is recreated, a limit that differs
   (`btrfs qgroup limit none` by hand) is set again, a volume made before level-1 qgroups is migrated,
   and level-1 qgroups of the driver that no volume names are removed. The first round runs at
   start-up, so start-up repairs and migrates.

Between rounds, every `nested_interval` seconds (5 by default), `reparent_nested()` finds subvolumes a
pod made inside its volume that are not in exactly the volume's level-1 qgroup and moves them there.

Every action is logged and told to the observer (the exporter counts them); a step that fails is
logged with its traceback and told to the observer, never raised: the next round tries again.
"""

import logging
import threading
import time
from typing import Protocol

from btrfs_core.models import QuotaMode
from btrfs_core.pool import Pool

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 60.0
DEFAULT_NESTED_INTERVAL = 5.0

ACTION_RESCAN = "rescan"
ACTION_REMOVE_STALE_QGROUP = "remove_stale_qgroup"
ACTION_CLEAR_STAGING = "clear_staging"
ACTION_RELEASE_VANISHED = "release_vanished_volume"
ACTION_MIGRATE_VOLUME = "migrate_volume"
ACTION_RESTORE_QGROUP = "restore_qgroup"
ACTION_RESTORE_LIMIT = "restore_limit"
ACTION_REMOVE_ORPHAN_QGROUP = "remove_orphan_qgroup"
ACTION_REPARENT_SUBVOLUME = "reparent_subvolume"
ACTIONS = (
    ACTION_RESCAN,
    ACTION_REMOVE_STALE_QGROUP,
    ACTION_CLEAR_STAGING,
    ACTION_RELEASE_VANISHED,
    ACTION_MIGRATE_VOLUME,
    ACTION_RESTORE_QGROUP,
    ACTION_RESTORE_LIMIT,
    ACTION_REMOVE_ORPHAN_QGROUP,
    ACTION_REPARENT_SUBVOLUME,
)
STEPS = (
    "quota_consistency",
    "stale_qgroups",
    "staging",
    "vanished_volumes",
    "volume_quotas",
    "nested_subvolumes",
)


class ReconcilerObserver(Protocol):
    """What the reconciler finds and does, as it happens, on its thread. Must not raise."""

    def repaired(self, action: str, count: int) -> None: ...  # `count` repairs of kind `action` (ACTIONS)
    def stale_qgroups(self, found: int) -> None: ...  # stale qgroups this round, before any was removed
    def debris_left(self, entries: int) -> None: ...  # crash debris that resisted removal this round
    def nested_out_of_place(self, found: int) -> None: ...  # found (then moved) by a nested scan
    def step_failed(self, step: str) -> None: ...  # one of STEPS; the error is logged
    def round_done(self) -> None: ...  # every step of a round tried


class Reconciler:
    """Runs `run_once()` now and then every `interval` seconds in a daemon thread until `stop()`,
    and `scan_nested()` every `nested_interval` seconds."""

    def __init__(
        self,
        pool: Pool,
        observer: ReconcilerObserver,
        interval: float = DEFAULT_INTERVAL,
        nested_interval: float = DEFAULT_NESTED_INTERVAL,
    ) -> None:
        if not interval > 0 or not nested_interval > 0:
            raise ValueError(f"reconcile intervals {interval}, {nested_interval} are not both positive")
        self._pool = pool
        self._observer = observer
        self._interval = interval
        self._nested_interval = nested_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("reconciler already started")
        self._thread = threading.Thread(target=self._loop, name="btrfs-csi-reconciler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> bool:
        """Asks the thread to stop and waits up to `timeout` for the current round; True if it ended."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        log.info(
            "reconciler started for pool %s, every %.0f s (nested subvolumes every %.0f s)",
            self._pool.root,
            self._interval,
            self._nested_interval,
        )
        next_round = time.monotonic()
        while not self._stop.is_set():
            if time.monotonic() >= next_round:
                self.run_once()
                next_round = time.monotonic() + self._interval
            self.scan_nested()
            if self._stop.wait(max(0.0, min(self._nested_interval, next_round - time.monotonic()))):
                break
        log.info("reconciler stopped for pool %s", self._pool.root)

    def scan_nested(self) -> None:
        """Moves subvolumes nested in volumes into their volume's qgroup; failures logged and reported."""
        try:
            scan = self._pool.upkeep.reparent_nested()
        except Exception:
            self._observer.step_failed("nested_subvolumes")
            log.exception("reconciler step nested_subvolumes failed on pool %s", self._pool.root)
            return
        self._observer.nested_out_of_place(scan.out_of_place)
        self._observer.repaired(ACTION_REPARENT_SUBVOLUME, scan.repaired)

    def run_once(self) -> None:
        """One round of every step; failures are logged and reported, not raised."""
        for step, action in (
            ("quota_consistency", self._check_consistency),
            ("stale_qgroups", self._remove_stale_qgroups),
            ("staging", self._clear_staging),
            ("vanished_volumes", self._release_vanished_volumes),
            ("volume_quotas", self._repair_quotas),
        ):
            if self._stop.is_set():
                return
            try:
                action()
            except Exception:
                self._observer.step_failed(step)
                log.exception("reconciler step %s failed on pool %s", step, self._pool.root)
        self._observer.round_done()

    def _check_consistency(self) -> None:
        status = self._pool.stats.quota_status()
        if not status.inconsistent or status.mode is not QuotaMode.FULL:
            return
        if status.rescan_running:
            log.info("qgroups of pool %s are inconsistent; a rescan is already running", self._pool.root)
            return
        log.warning("qgroups of pool %s are inconsistent: starting a quota rescan", self._pool.root)
        self._pool.upkeep.rescan_quota()
        self._observer.repaired(ACTION_RESCAN, 1)

    def _remove_stale_qgroups(self) -> None:
        stale = self._pool.upkeep.stale_qgroups()
        self._observer.stale_qgroups(len(stale))
        if not stale:
            return
        removed = self._pool.upkeep.remove_stale_qgroups(stale)
        for qgroupid in removed:
            log.info("removed stale qgroup 0/%d from pool %s", qgroupid, self._pool.root)
        left = sorted(set(stale) - set(removed))
        if left:
            log.info(
                "%d stale qgroups of pool %s are still in use (the kernel refused them): %s",
                len(left),
                self._pool.root,
                ", ".join(f"0/{q}" for q in left[:20]) + (" ..." if len(left) > 20 else ""),
            )
        self._observer.repaired(ACTION_REMOVE_STALE_QGROUP, len(removed))

    def _clear_staging(self) -> None:
        # Safe against in-flight creates, snapshots and deletes: each holds the pool lock while its
        # object sits in staging or under a hidden snapshot name, or marks it as its own trash, and
        # clear_staging takes the same lock (tests/core/test_reconciler.py).
        debris = self._pool.upkeep.clear_staging()
        self._observer.debris_left(len(debris.left))
        if debris.removed:
            log.warning("cleared %d debris entries of pool %s", debris.removed, self._pool.root)
            self._observer.repaired(ACTION_CLEAR_STAGING, debris.removed)

    def _release_vanished_volumes(self) -> None:
        released = self._pool.upkeep.release_vanished_volumes()
        self._observer.repaired(ACTION_RELEASE_VANISHED, len(released))

    def _repair_quotas(self) -> None:
        repairs = self._pool.upkeep.repair_quotas()
        for action, count in (
            (ACTION_MIGRATE_VOLUME, repairs.migrated),
            (ACTION_RESTORE_QGROUP, repairs.qgroups_restored),
            (ACTION_RESTORE_LIMIT, repairs.limits_restored),
            (ACTION_REMOVE_ORPHAN_QGROUP, repairs.orphans_removed),
        ):
            self._observer.repaired(action, count)
