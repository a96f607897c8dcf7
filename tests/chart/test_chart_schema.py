"""values.schema.json rejects wrong types, unknown keys and bad enums: rendering (which is what
`helm install` and `helm template` do) fails with the offending key named."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from tests.chart.helm_render import CHART_DIR, OPTIONS, render_files

BAD_VALUES: dict[str, tuple[dict[str, Any], str]] = {
    # wrong types
    "replicas-string": ({"resizer": {"replicas": "two"}}, "/resizer/replicas"),
    "bool-as-string": ({"storageClass": {"create": "yes"}}, "/storageClass/create"),
    "port-as-string": ({"metrics": {"port": "9842"}}, "/metrics/port"),
    "port-out-of-range": ({"metrics": {"port": 70000}}, "/metrics/port"),
    "label-value-number": ({"nodeSelector": {"btrfs.csi.dev/pool": True}}, "/nodeSelector"),
    "tolerations-object": ({"tolerations": {"operator": "Exists"}}, "/tolerations"),
    "extra-args-string": ({"node": {"provisioner": {"extraArgs": "--v=5"}}}, "/node/provisioner/extraArgs"),
    "resources-list": ({"node": {"driver": {"resources": []}}}, "/node/driver/resources"),
    # unknown keys (typos must not be silently ignored)
    "unknown-top-level": ({"replicaCount": 3}, "replicaCount"),
    "unknown-pool-key": ({"pool": {"device": "/dev/sdb"}}, "device"),
    "typo-in-sidecar": ({"node": {"provisioner": {"extraFlags": []}}}, "extraFlags"),
    "typo-in-monitor": ({"metrics": {"serviceMonitor": {"intervall": "30s"}}}, "intervall"),
    "typo-in-image": ({"image": {"repo": "x"}}, "repo"),
    # bad enums and formats
    "pool-mode": ({"pool": {"mode": "zfs"}}, "/pool/mode"),
    "quota-mode": ({"quotaMode": "none"}, "/quotaMode"),
    "reclaim-policy": ({"storageClass": {"reclaimPolicy": "Recycle"}}, "/storageClass/reclaimPolicy"),
    "deletion-policy": (
        {"volumeSnapshotClass": {"deletionPolicy": "Destroy"}},
        "/volumeSnapshotClass/deletionPolicy",
    ),
    "log-format": ({"logFormat": "xml"}, "/logFormat"),
    "overprovision-below-one": ({"overprovision": 0.5}, "/overprovision"),
    "overprovision-string": ({"overprovision": "lots"}, "/overprovision"),
    "cpu-word": ({"cpu": "first"}, "/cpu"),
    "cpu-negative": ({"cpu": -1}, "/cpu"),
    "pull-policy": ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    "driver-name": ({"driverName": "Btrfs_CSI"}, "/driverName"),
    # topology.<name> must fit a 63-character label prefix
    "driver-name-too-long": ({"driverName": "a" * 51 + ".com"}, "/driverName"),
    "log-level": ({"logLevel": "trace"}, "/logLevel"),
    "relative-kubelet-dir": ({"kubeletDir": "var/lib/kubelet"}, "/kubeletDir"),
    "relative-pool-path": ({"pool": {"path": "pool"}}, "/pool/path"),
    "loop-size": ({"pool": {"loopfile": {"size": "ten gigs"}}}, "/pool/loopfile/size"),
    "duration": ({"node": {"provisioner": {"timeout": "60"}}}, "/node/provisioner/timeout"),
    "empty-sidecar-tag": ({"node": {"registrar": {"image": {"tag": ""}}}}, "/node/registrar/image/tag"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_bad_values_fail_to_render(case: str) -> None:
    values, where = BAD_VALUES[case]
    with pytest.raises(helm.HelmValuesError) as excinfo:
        render_files(values)
    assert where in str(excinfo.value), str(excinfo.value)


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_documented_options_pass_the_schema(option: str) -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        assert chart.schema is not None  # a chart without one passes anything
        chart.validate_schema(OPTIONS[option])


def test_defaults_pass_the_schema() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        chart.validate_schema(chart.values)
        assert chart.schema is not None
        assert chart.schema["additionalProperties"] is False
