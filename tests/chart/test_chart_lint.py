"""`helm lint --strict` of the chart, for its defaults and for every documented option."""

from __future__ import annotations

import helm_python as helm
import pytest

from tests.chart.helm_render import CHART_DIR, NAMESPACE, OPTIONS
from tests.chart.kube_versions import NEWEST_KUBE_VERSIONS


@pytest.mark.parametrize("kube_version", NEWEST_KUBE_VERSIONS)
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_lint_strict(option: str, kube_version: str) -> None:
    report = helm.lint(
        CHART_DIR,
        OPTIONS[option],
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{kube_version}.0",
    )
    # Severity 1 is INFO ("icon is recommended"); warnings (2) and errors (3) fail --strict.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["total_charts_linted"] == 1
    assert not problems, problems
    assert not report["errors"], report["errors"]


def test_lint_reports_schema_violations() -> None:
    """Lint is not a rubber stamp: bad values come back as errors."""
    report = helm.lint(CHART_DIR, {"pool": {"mode": "zfs"}}, strict=True, namespace=NAMESPACE)
    assert report["errors"], report
    assert any("/pool/mode" in e for e in report["errors"]), report["errors"]
