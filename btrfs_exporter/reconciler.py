"""The reconciler's metrics: the exporter's observer of `btrfs_core.maintenance.Reconciler`.

Every repair counts in btrfs_csi_reconciler_actions_total{action}, every failed step in
btrfs_csi_reconciler_errors_total{step}; btrfs_csi_pool_stale_qgroups, btrfs_csi_staging_debris_entries
and btrfs_csi_nested_subvolumes_out_of_place show what the last round (or nested scan) found.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge

from btrfs_core.maintenance import ACTION_REMOVE_STALE_QGROUP, ACTIONS, STEPS


class ReconcilerMetrics:
    """The reconciler's metric objects, registered in one registry (zero until the first round), and
    the observer that the reconciler tells of its rounds."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.actions = Counter(
            "btrfs_csi_reconciler_actions",
            "Repairs the reconciler made: rescan (started a quota rescan of inconsistent qgroups),"
            " remove_stale_qgroup (one qgroup each), clear_staging (one staging entry each),"
            " release_vanished_volume (the capacity of one volume deleted behind the driver's back),"
            " migrate_volume (a volume of the old shape given its level-1 qgroup), restore_qgroup"
            " (a volume's level-1 qgroup recreated), restore_limit (a limit set back to the capacity"
            " in the volume's metadata), remove_orphan_qgroup (a level-1 qgroup no volume names),"
            " reparent_subvolume (a subvolume nested in a volume moved into the volume's qgroup).",
            labelnames=("action",),
            registry=registry,
        )
        self.errors = Counter(
            "btrfs_csi_reconciler_errors",
            "Reconciler steps that failed (logged with the error); retried the next round.",
            labelnames=("step",),
            registry=registry,
        )
        self.stale_qgroups_found = Gauge(
            "btrfs_csi_pool_stale_qgroups",
            "Level-0 qgroups whose subvolume no longer exists, found at the last reconcile round"
            " (before removing those the kernel lets go). Under simple quotas a deleted volume's"
            " qgroup stays while snapshots or clones still hold its extents.",
            registry=registry,
        )
        self.stale_removed = Counter(
            "btrfs_csi_stale_qgroups_removed", "Stale qgroups the reconciler removed.", registry=registry
        )
        self.debris_entries = Gauge(
            "btrfs_csi_staging_debris_entries",
            "Crash debris (staging entries, half-made snapshots) that resisted removal at the last"
            " reconcile round; retried every round, the reasons logged.",
            registry=registry,
        )
        self.debris_errors = Counter(
            "btrfs_csi_staging_errors",
            "Failed removals of crash debris, one per entry and round (the reasons are logged).",
            registry=registry,
        )
        self.nested_found = Gauge(
            "btrfs_csi_nested_subvolumes_out_of_place",
            "Subvolumes inside volumes found outside their volume's qgroup at the last nested scan"
            " (each then moved in): made by a pod since the scan before, or with its own"
            " qgroup_inherit. Until moved, under full qgroups, their data escapes the volume's limit.",
            registry=registry,
        )
        self.rounds = Counter(
            "btrfs_csi_reconciler_rounds", "Reconcile rounds run (all steps tried).", registry=registry
        )
        for action in ACTIONS:
            self.actions.labels(action)  # exported as 0 from the start, so rate() has a baseline
        for step in STEPS:
            self.errors.labels(step)

    # The ReconcilerObserver protocol.

    def repaired(self, action: str, count: int) -> None:
        self.actions.labels(action).inc(count)
        if action == ACTION_REMOVE_STALE_QGROUP:
            self.stale_removed.inc(count)

    def stale_qgroups(self, found: int) -> None:
        self.stale_qgroups_found.set(found)

    def debris_left(self, entries: int) -> None:
        self.debris_entries.set(entries)
        self.debris_errors.inc(entries)

    def nested_out_of_place(self, found: int) -> None:
        self.nested_found.set(found)

    def step_failed(self, step: str) -> None:
        self.errors.labels(step).inc()

    def round_done(self) -> None:
        self.rounds.inc()
