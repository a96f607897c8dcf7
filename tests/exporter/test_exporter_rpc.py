"""The RPC metrics the csi server reports to (tests/csi/test_server.py checks the reports over gRPC)."""

from prometheus_client import CollectorRegistry

from btrfs_exporter.rpc import RpcMetrics


def test_a_finished_call_is_timed_by_method_and_code_and_leaves_flight() -> None:
    registry = CollectorRegistry()
    metrics = RpcMetrics(registry)
    metrics.started("CreateVolume")
    metrics.started("Probe")
    assert registry.get_sample_value("btrfs_csi_rpc_in_flight") == 2
    metrics.finished("CreateVolume", "ABORTED", 0.003)
    assert registry.get_sample_value("btrfs_csi_rpc_in_flight") == 1
    labels = {"method": "CreateVolume", "code": "ABORTED"}
    assert registry.get_sample_value("btrfs_csi_rpc_duration_seconds_count", labels) == 1
    assert registry.get_sample_value("btrfs_csi_rpc_duration_seconds_sum", labels) == 0.003
    assert registry.get_sample_value("btrfs_csi_rpc_duration_seconds_bucket", {**labels, "le": "0.0025"}) == 0
    assert registry.get_sample_value("btrfs_csi_rpc_duration_seconds_bucket", {**labels, "le": "0.005"}) == 1
    probe = {"method": "Probe", "code": "OK"}
    assert registry.get_sample_value("btrfs_csi_rpc_duration_seconds_count", probe) is None  # still running
