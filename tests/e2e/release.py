"""The driver's release on the e2e cluster, whichever provider made it: its names, the chart installed,
upgraded or uninstalled with the Helm engine of helm-python-sdk (no helm binary needed), and its
containers' logs for a failing test's report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.steps import log

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "btrfs-csi"

DRIVER_IMAGE = "btrfs-csi:e2e"
RELEASE = "btrfs-csi"
NAMESPACE = "btrfs-csi"
DRIVER_NAME = "btrfs.csi.dev"
TOPOLOGY_KEY = "topology.btrfs.csi.dev/node"
POOL_LABEL = "btrfs.csi.dev/pool"


def release_logs(api: Any) -> str:
    """The last lines of every container of the release, for a failing test's report."""
    from kubernetes import client

    core: Any = client.CoreV1Api(api)
    out = []
    for pod in core.list_namespaced_pod(NAMESPACE).items:
        for container in pod.spec.containers:
            try:
                text = core.read_namespaced_pod_log(
                    pod.metadata.name, NAMESPACE, container=container.name, tail_lines=100
                )
            except Exception as e:
                text = f"(no log: {e})"
            out.append(f"--- {pod.metadata.name}/{container.name} on {pod.spec.node_name}\n{text}")
    return "\n".join(out)


def helm_release(kubeconfig: Path, action: str, values: dict[str, Any]) -> Any:
    """install, upgrade or uninstall the chart's release with the Helm engine of helm-python-sdk,
    waiting for its workloads."""
    import helm_python as helm

    with helm.Config(kubeconfig_path=kubeconfig, namespace=NAMESPACE) as cfg:
        if action == "install":
            release = cfg.install(
                CHART_DIR, RELEASE, values, namespace=NAMESPACE, wait="watcher", timeout=600
            )
        elif action == "upgrade":
            release = cfg.upgrade(
                CHART_DIR, RELEASE, values, namespace=NAMESPACE, wait="watcher", timeout=600
            )
        elif action == "uninstall":
            release = cfg.uninstall(RELEASE, wait="watcher", timeout=600)
        else:
            raise ValueError(action)
    log(f"helm {action} {RELEASE}: revision {release.get('revision')} {release.get('status')}")
    return release


def crd_established(ext: Any, name: str) -> bool:
    """Whether a CustomResourceDefinition the release needs (the VolumeSnapshot ones) is served."""
    crd = ext.read_custom_resource_definition(name)
    return any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or []))
