"""The Kubernetes minor versions the rendered objects are validated against."""

from __future__ import annotations

from kubernetes_validate import utils as kv_utils
from packaging.version import Version


def newest_kube_versions(count: int = 2) -> list[str]:
    """The `count` newest minor versions kubernetes-validate ships schemas for, e.g. ['1.36', '1.37']."""
    minors = {kv_utils.major_minor(v) for v in kv_utils.all_versions()}
    return sorted(minors, key=Version)[-count:]


NEWEST_KUBE_VERSIONS = newest_kube_versions()
