"""manifests/ is the chart rendered with default values; it must never drift from the chart."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.chart.helm_render import REPO, render

TOOL = REPO / "tools" / "render-manifests"
MANIFEST = REPO / "manifests" / "btrfs-csi.yaml"


def test_manifests_match_a_fresh_render() -> None:
    result = subprocess.run(
        [str(TOOL), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-4000:] + "\nrun `make manifests` to regenerate manifests/"


def test_manifests_hold_the_default_render_plus_namespace() -> None:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    namespace = docs[0]
    assert namespace["kind"] == "Namespace" and namespace["metadata"]["name"] == "btrfs-csi"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"

    def key(obj: dict[str, object]) -> str:
        return yaml.safe_dump(obj, sort_keys=True)

    assert sorted(map(key, docs[1:])) == sorted(map(key, render("default")))
    kinds = [d["kind"] for d in docs]
    # RBAC before the workloads that use it, as Helm installs them.
    assert kinds.index("ClusterRoleBinding") < kinds.index("DaemonSet") < kinds.index("Deployment")
