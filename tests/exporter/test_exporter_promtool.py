"""promtool on the exposition and on the example alert rules of docs/alerts.md."""

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from btrfs_core import filesystem
from btrfs_core.maintenance import Reconciler
from btrfs_core.pool import Pool
from btrfs_exporter import build_registry
from tests.exporter.helpers import exposition, pvc, require, write_file

MiB = 1 << 20
ALERTS_DOC = Path(__file__).resolve().parents[2] / "docs" / "alerts.md"


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    binary = require("promtool", "prometheus")
    return subprocess.run([binary, *args], input=stdin, capture_output=True, text=True, timeout=120)


@pytest.mark.kernel
@pytest.mark.parametrize("library", [False, True], ids=["render", "generate_latest"])
def test_exposition_passes_promtool_check_metrics(pool: Pool, library: bool) -> None:
    require("promtool", "prometheus")
    metrics = build_registry(pool, "btrfs.csi.test")
    volume = pool.create_volume("data", 32 * MiB, metadata=pvc("team", 'odd "name"\\with\nescapes'))
    pool.create_volume("plain", 16 * MiB)
    write_file(pool.volume_path(volume.id) / "f", MiB)
    pool.create_snapshot("snap", volume.id)
    filesystem.sync(pool.root)
    Reconciler(pool, metrics.reconciler_metrics).run_once()
    for method, code in (
        ("CreateVolume", "OK"),
        ("DeleteVolume", "NOT_FOUND"),
        ("NodeStageVolume", "ABORTED"),
    ):
        metrics.rpc.duration.labels(method, code).observe(0.012)
    text = exposition(metrics.registry, library)
    assert 'pvc_name="odd \\"name\\"\\\\with\\nescapes"' in text
    result = promtool("check", "metrics", stdin=text)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "" and result.stderr.strip() == "", result.stdout + result.stderr


def alert_rules() -> str:
    """The rule file of docs/alerts.md: its one YAML block that starts with `groups:`."""
    blocks = re.findall(r"^```yaml\n(.*?)^```", ALERTS_DOC.read_text(), re.S | re.M)
    rules: list[str] = [block for block in blocks if block.startswith("groups:")]
    assert len(rules) == 1, f"{ALERTS_DOC} should hold one ```yaml block starting with groups:"
    return rules[0]


def test_alert_rules_pass_promtool_check_rules(tmp_path: Path) -> None:
    rules = tmp_path / "btrfs-csi-alerts.yaml"
    rules.write_text(alert_rules())
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def without_annotations(rules: str) -> str:
    """The rules minus their annotations (prose, rendered from templates that check rules parses),
    so that the unit tests below compare the alerts' labels and firing times only."""
    kept: list[str] = []
    skip_deeper_than: int | None = None
    for line in rules.splitlines():
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not line.strip() or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if line.strip() == "annotations:":
            skip_deeper_than = indent
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    selector = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{selector}}}", "values": values}


def firing(alertname: str, at: str, *expected: dict[str, str]) -> dict[str, Any]:
    """An alert_rule_test entry comparing labels only (annotations are prose)."""
    return {"eval_time": at, "alertname": alertname, "exp_alerts": [{"exp_labels": e} for e in expected]}


NODE = {"instance": "10.0.0.1:9842", "node": "node-1"}
VOL = {**NODE, "volume_id": "pvc-1", "pvc_namespace": "team", "pvc_name": "data"}
ROOMY = {**NODE, "volume_id": "pvc-2", "pvc_namespace": "team", "pvc_name": "logs"}


def unit_tests() -> list[dict[str, Any]]:
    gib = 1 << 30
    rpc = "btrfs_csi_rpc_duration_seconds_count"
    return [
        {  # 95% full volume warns, a 50% one does not; the full one goes critical
            "interval": "1m",
            "input_series": [
                series("btrfs_csi_volume_referenced_bytes", f"{95 * MiB}x20", **VOL),
                series("btrfs_csi_volume_limit_bytes", f"{100 * MiB}x20", **VOL),
                series("btrfs_csi_volume_referenced_bytes", f"{50 * MiB}x20", **ROOMY),
                series("btrfs_csi_volume_limit_bytes", f"{100 * MiB}x20", **ROOMY),
            ],
            "alert_rule_test": [
                firing("BtrfsCsiVolumeNearlyFull", "3m"),
                firing("BtrfsCsiVolumeNearlyFull", "10m", {**VOL, "severity": "warning"}),
                firing("BtrfsCsiVolumeFull", "10m"),
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                series("btrfs_csi_volume_referenced_bytes", f"{100 * MiB - 32 * 1024}x20", **VOL),
                series("btrfs_csi_volume_limit_bytes", f"{100 * MiB}x20", **VOL),
            ],
            "alert_rule_test": [firing("BtrfsCsiVolumeFull", "5m", {**VOL, "severity": "critical"})],
        },
        {  # 5% free pool; inconsistent accounting for 20 minutes
            "interval": "1m",
            "input_series": [
                series("btrfs_csi_pool_free_bytes", f"{gib // 20}x30", **NODE),
                series("btrfs_csi_pool_size_bytes", f"{gib}x30", **NODE),
                series("btrfs_csi_pool_qgroups_inconsistent", "0 0 1x28", **NODE),
            ],
            "alert_rule_test": [
                firing("BtrfsCsiPoolNearlyFull", "15m", {**NODE, "severity": "warning"}),
                firing("BtrfsCsiQgroupsInconsistent", "10m"),
                firing("BtrfsCsiQgroupsInconsistent", "20m", {**NODE, "severity": "critical"}),
            ],
        },
        {  # stale qgroups growing by 30 an hour for 8 hours; reconciler errors every round
            "interval": "10m",
            "input_series": [
                series("btrfs_csi_pool_stale_qgroups", "0+5x48", **NODE),
                series("btrfs_csi_reconciler_errors_total", "0+10x48", **NODE, step="staging"),
                series("btrfs_csi_reconciler_errors_total", "0x48", **NODE, step="stale_qgroups"),
            ],
            "alert_rule_test": [
                firing("BtrfsCsiStaleQgroupsGrowing", "8h", {**NODE, "severity": "warning"}),
                firing("BtrfsCsiReconcilerFailing", "1h", {**NODE, "severity": "warning"}),
            ],
        },
        {  # debris that resists for half an hour warns; debris gone within minutes does not
            "interval": "1m",
            "input_series": [
                series("btrfs_csi_staging_debris_entries", "1x60", **NODE),
                series(
                    "btrfs_csi_staging_debris_entries", "1x3 0x57", instance="10.0.0.2:9842", node="node-2"
                ),
            ],
            "alert_rule_test": [
                firing("BtrfsCsiStagingDebrisStuck", "20m"),
                firing("BtrfsCsiStagingDebrisStuck", "40m", {**NODE, "severity": "warning"}),
            ],
        },
        {  # a pool remounted read-only for a minute does not alert, one read-only for longer does
            "interval": "1m",
            "input_series": [
                series("btrfs_csi_pool_read_only", "0 1 0x10 1x10", **NODE),
            ],
            "alert_rule_test": [
                firing("BtrfsCsiPoolReadOnly", "5m"),
                firing("BtrfsCsiPoolReadOnly", "20m", {**NODE, "severity": "critical"}),
            ],
        },
        {  # a steady number of stale qgroups (simple quotas holding extents) is not an alert
            "interval": "10m",
            "input_series": [series("btrfs_csi_pool_stale_qgroups", "40x48", **NODE)],
            "alert_rule_test": [firing("BtrfsCsiStaleQgroupsGrowing", "8h")],
        },
        {  # 1 INTERNAL in 11 CreateVolume calls is an alert; NOT_FOUND and ABORTED answers are not
            "interval": "1m",
            "input_series": [
                series(rpc, "0+10x30", **NODE, method="CreateVolume", code="OK"),
                series(rpc, "0+1x30", **NODE, method="CreateVolume", code="INTERNAL"),
                series(rpc, "0+10x30", **NODE, method="DeleteVolume", code="OK"),
                series(rpc, "0+10x30", **NODE, method="DeleteVolume", code="NOT_FOUND"),
                series(rpc, "0+10x30", **NODE, method="DeleteVolume", code="ABORTED"),
            ],
            "alert_rule_test": [
                firing("BtrfsCsiRpcErrors", "20m", {**NODE, "method": "CreateVolume", "severity": "warning"}),
            ],
        },
    ]


def test_alert_rules_fire_as_documented(tmp_path: Path) -> None:
    rules = without_annotations(alert_rules())
    assert "annotations" not in rules and rules.count("alert: ") == 10
    (tmp_path / "alerts.yaml").write_text(rules)
    tests = tmp_path / "alerts_test.yaml"  # JSON is YAML
    suite = {"rule_files": ["alerts.yaml"], "evaluation_interval": "1m", "tests": unit_tests()}
    tests.write_text(json.dumps(suite))
    result = promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr
