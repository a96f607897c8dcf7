"""The Grafana dashboard shipped with the chart: valid JSON, every query uses only metric names the
driver exports, and the panels operators need are there."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.chart.helm_render import CHART_DIR

DASHBOARD = CHART_DIR / "dashboards" / "btrfs-csi.json"

# The driver's metric families (histograms add _bucket/_count/_sum series).
EXPORTED = {
    "btrfs_csi_volume_referenced_bytes",
    "btrfs_csi_volume_exclusive_bytes",
    "btrfs_csi_volume_limit_bytes",
    "btrfs_csi_snapshot_referenced_bytes",
    "btrfs_csi_snapshot_exclusive_bytes",
    "btrfs_csi_pool_size_bytes",
    "btrfs_csi_pool_used_bytes",
    "btrfs_csi_pool_free_bytes",
    "btrfs_csi_pool_volumes",
    "btrfs_csi_pool_snapshots",
    "btrfs_csi_pool_quota_mode",
    "btrfs_csi_pool_qgroups_inconsistent",
    "btrfs_csi_stale_qgroups_removed_total",
    "btrfs_csi_rpc_duration_seconds_bucket",
    "btrfs_csi_rpc_duration_seconds_count",
    "btrfs_csi_rpc_duration_seconds_sum",
    "btrfs_csi_rpc_in_flight",
    "btrfs_csi_build_info",
    "btrfs_csi_reconciler_actions_total",
}
METRIC = re.compile(r"\bbtrfs_csi_[a-z_]+\b")


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def exprs(dashboard: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in panels(dashboard) for t in p["targets"]]
    out += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    return out


def test_dashboard_is_valid_and_unique() -> None:
    dashboard = load()
    assert dashboard["uid"] == "btrfs-csi"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_queries_use_exported_metrics_only() -> None:
    used = {m for e in exprs(load()) for m in METRIC.findall(e)}
    assert used <= EXPORTED, used - EXPORTED
    # Everything the driver exports is on the dashboard somewhere.
    families = {re.sub(r"_(bucket|count|sum)$", "", m) for m in EXPORTED}
    assert families <= {re.sub(r"_(bucket|count|sum)$", "", m) for m in used}


def test_required_panels() -> None:
    by_title = {p["title"]: p for p in panels(load())}

    def queries(title: str) -> str:
        return " ".join(t["expr"] for t in by_title[title]["targets"])

    usage = queries("Volume usage vs limit")
    assert "btrfs_csi_volume_referenced_bytes" in usage and "btrfs_csi_volume_limit_bytes" in usage
    assert "btrfs_csi_pool_size_bytes" in queries("Pool size and used")
    assert "btrfs_csi_pool_free_bytes" in queries("Pool free")
    assert "btrfs_csi_pool_qgroups_inconsistent" in queries("Qgroups inconsistent")
    assert "histogram_quantile(0.99" in queries("RPC latency p50 / p99")
    assert 'code!="OK"' in queries("RPC error rate")
