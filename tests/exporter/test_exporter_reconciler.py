"""The reconciler's metrics: what the core's Reconciler reports (tests/core/test_reconciler.py) becomes
these metrics, exported as 0 from the start so that rate() has a baseline."""

from prometheus_client import CollectorRegistry

from btrfs_core.maintenance import ACTION_CLEAR_STAGING, ACTION_REMOVE_STALE_QGROUP, ACTIONS, STEPS
from btrfs_exporter.reconciler import ReconcilerMetrics


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    assert found is not None, f"{name}{labels} not exported"
    return found


def test_every_action_and_step_is_exported_from_the_start() -> None:
    registry = CollectorRegistry()
    ReconcilerMetrics(registry)
    for action in ACTIONS:
        assert value(registry, "btrfs_csi_reconciler_actions_total", action=action) == 0
    for step in STEPS:
        assert value(registry, "btrfs_csi_reconciler_errors_total", step=step) == 0
    for name in (
        "btrfs_csi_reconciler_rounds_total",
        "btrfs_csi_pool_stale_qgroups",
        "btrfs_csi_stale_qgroups_removed_total",
        "btrfs_csi_staging_debris_entries",
        "btrfs_csi_staging_errors_total",
        "btrfs_csi_nested_subvolumes_out_of_place",
    ):
        assert value(registry, name) == 0


def test_reports_become_counters_and_gauges() -> None:
    registry = CollectorRegistry()
    metrics = ReconcilerMetrics(registry)
    for _ in range(2):  # two rounds, each finding 3 stale qgroups and removing 2, 1 debris entry stuck
        metrics.stale_qgroups(3)
        metrics.repaired(ACTION_REMOVE_STALE_QGROUP, 2)
        metrics.debris_left(1)
        metrics.repaired(ACTION_CLEAR_STAGING, 0)
        metrics.step_failed("volume_quotas")
        metrics.round_done()
    metrics.nested_out_of_place(4)

    assert value(registry, "btrfs_csi_pool_stale_qgroups") == 3  # the last round's finding
    assert value(registry, "btrfs_csi_stale_qgroups_removed_total") == 4
    assert value(registry, "btrfs_csi_reconciler_actions_total", action=ACTION_REMOVE_STALE_QGROUP) == 4
    assert value(registry, "btrfs_csi_reconciler_actions_total", action=ACTION_CLEAR_STAGING) == 0
    assert value(registry, "btrfs_csi_staging_debris_entries") == 1
    assert value(registry, "btrfs_csi_staging_errors_total") == 2  # one per entry and round
    assert value(registry, "btrfs_csi_reconciler_errors_total", step="volume_quotas") == 2
    assert value(registry, "btrfs_csi_reconciler_rounds_total") == 2
    assert value(registry, "btrfs_csi_nested_subvolumes_out_of_place") == 4
    metrics.debris_left(0)
    assert value(registry, "btrfs_csi_staging_debris_entries") == 0
    assert value(registry, "btrfs_csi_staging_errors_total") == 2
