"""A kind cluster with real btrfs pools, for the e2e suite.

Layout: one control-plane node and two workers. Each worker gets its own btrfs filesystem, made
ON THE HOST (sparse image file -> loop device -> mkfs.btrfs -> mount) and handed to the node
container with a kind extraMount at /var/lib/btrfs-csi (propagation HostToContainer). Loop devices
are never created inside kind nodes: a node's /dev is a static copy taken when the container
starts, so devices attached later do not show up there (kind#1248).

Then: the VolumeSnapshot CRDs and the snapshot-controller from the external-snapshotter release
manifests (pinned URLs; the controller is switched to --enable-distributed-snapshotting and given
the nodes rule that mode needs), the driver image built from this repository and `kind load`ed,
and the chart installed (release.py).

Entry points: the `cluster` fixture in conftest.py (tests/e2e/run.sh), or by hand
`python -m tests.e2e.kind_cluster up|down`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.release import (
    DRIVER_IMAGE,
    DRIVER_NAME,
    NAMESPACE,
    POOL_LABEL,
    REPO,
    crd_established,
    helm_release,
    release_logs,
)
from tests.e2e.steps import brought_up, command, log, run, wait_for

CLUSTER_NAME = os.environ.get("BTRFS_CSI_E2E_CLUSTER", "btrfs-csi-e2e")
WORKDIR = Path(os.environ.get("BTRFS_CSI_E2E_WORKDIR", f"/var/tmp/{CLUSTER_NAME}"))
NODE_IMAGE = os.environ.get("BTRFS_CSI_E2E_NODE_IMAGE", "")  # kindest/node:vX.Y.Z, "" = kind's default
POOL_IN_NODE = "/var/lib/btrfs-csi"
WORKERS = 2
POOL_SIZE = 2 << 30

EXTERNAL_SNAPSHOTTER = "v8.6.0"
_SNAPSHOTTER_RAW = (
    f"https://raw.githubusercontent.com/kubernetes-csi/external-snapshotter/{EXTERNAL_SNAPSHOTTER}"
)
SNAPSHOT_CRD_URLS = [
    f"{_SNAPSHOTTER_RAW}/client/config/crd/snapshot.storage.k8s.io_volumesnapshotclasses.yaml",
    f"{_SNAPSHOTTER_RAW}/client/config/crd/snapshot.storage.k8s.io_volumesnapshotcontents.yaml",
    f"{_SNAPSHOTTER_RAW}/client/config/crd/snapshot.storage.k8s.io_volumesnapshots.yaml",
]
SNAPSHOT_CONTROLLER_URLS = [
    f"{_SNAPSHOTTER_RAW}/deploy/kubernetes/snapshot-controller/rbac-snapshot-controller.yaml",
    f"{_SNAPSHOTTER_RAW}/deploy/kubernetes/snapshot-controller/setup-snapshot-controller.yaml",
]
SNAPSHOT_CONTROLLER_NAMESPACE = "kube-system"


def missing_prerequisites() -> list[str]:
    """What this machine lacks to run the e2e suite, in words a person can act on."""
    missing: list[str] = []
    if shutil.which("docker") is None:
        missing.append("the docker CLI (not on PATH)")
    else:
        info = subprocess.run(
            ["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True, timeout=30
        )
        if info.returncode != 0:
            detail = (info.stderr.strip().splitlines() or ["no output"])[-1]
            missing.append(f"a running Docker daemon (`docker info` failed: {detail})")
    if shutil.which("kind") is None:
        missing.append("kind (https://kind.sigs.k8s.io; not on PATH)")
    if os.geteuid() != 0:
        missing.append("root (the host pools need losetup, mkfs.btrfs and mount)")
    if shutil.which("mkfs.btrfs") is None:
        missing.append("mkfs.btrfs on the host (Debian package btrfs-progs)")
    if "btrfs" not in Path("/proc/filesystems").read_text():
        missing.append("btrfs support in the host kernel")
    return missing


@dataclass
class HostPool:
    """A btrfs filesystem on a loop device, made and mounted on the host for one kind worker."""

    name: str
    image: Path
    mountpoint: Path
    device: str = ""

    def create(self) -> None:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        if not self.image.exists():
            with open(self.image, "wb") as f:
                f.truncate(POOL_SIZE)
        self.device = run("losetup", "--find", "--show", str(self.image)).stdout.strip()
        if (
            run("blkid", "-p", "-o", "value", "-s", "TYPE", self.device, check=False).stdout.strip()
            != "btrfs"
        ):
            run("mkfs.btrfs", "--quiet", "--force", self.device)
        run("mount", "-t", "btrfs", self.device, str(self.mountpoint))

    def destroy(self) -> None:
        # Volumes bind-mounted into pods may outlive a failed test: detach every mount of the device.
        for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
            source, target = line.split()[:2]
            if self.device and source == self.device:
                run("umount", "--lazy", target.replace("\\040", " "), check=False)
        if self.image.exists():
            attached = run("losetup", "-j", str(self.image), check=False).stdout
            for line in attached.splitlines():
                run("losetup", "-d", line.split(":", 1)[0], check=False)
            self.image.unlink()
        with contextlib.suppress(OSError):
            self.mountpoint.rmdir()


@dataclass
class Cluster:
    """The kind provider: one control plane and two workers, each with its own host pool."""

    provider = "kind"
    pod_image = DRIVER_IMAGE  # loaded on every node, has /bin/sh and coreutils

    name: str = CLUSTER_NAME
    workdir: Path = WORKDIR
    pools: dict[str, HostPool] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    def worker_names(self) -> list[str]:
        # kind names workers <cluster>-worker, <cluster>-worker2, ...
        return [f"{self.name}-worker" + ("" if i == 1 else str(i)) for i in range(1, WORKERS + 1)]

    def host_pool(self, node: str) -> HostPool:
        if node not in self.pools:
            self.pools[node] = HostPool(node, self.workdir / f"{node}.img", self.workdir / f"{node}-pool")
        return self.pools[node]

    def pool_path(self, node: str) -> Path:
        """Where `node`'s pool is mounted on this host (the test's oracle for subvolumes)."""
        return self.host_pool(node).mountpoint

    def version(self) -> str:
        from kubernetes import client

        info: Any = client.VersionApi(self.api()).get_code()
        return str(info.git_version)

    def kubelet_get(self, node: str, path: str) -> str:
        from kubernetes import client

        core: Any = client.CoreV1Api(self.api())
        return str(core.connect_get_node_proxy_with_path(node, path))

    # --- lifecycle -----------------------------------------------------------------------------

    def preflight(self) -> None:
        """Refuse to touch a cluster this run did not make (e.g. one kept with BTRFS_CSI_E2E_KEEP)."""
        if self.name in run("kind", "get", "clusters").stdout.split():
            raise RuntimeError(
                f"kind cluster {self.name} already exists: `python -m tests.e2e.kind_cluster down` first"
            )

    def up(self) -> None:
        """After preflight()."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        for node in self.worker_names():
            self.host_pool(node).create()
        config = self.workdir / "kind.yaml"
        config.write_text(yaml.safe_dump(self.kind_config(), sort_keys=False))
        args = ["kind", "create", "cluster", "--name", self.name, "--config", str(config)]
        args += ["--kubeconfig", str(self.kubeconfig), "--wait", "180s"]
        if NODE_IMAGE:
            args += ["--image", NODE_IMAGE]
        run(*args, timeout=900)
        self.label_workers()
        self.install_snapshot_support()
        self.build_and_load_image()
        self.install_chart()
        self.wait_for_driver()

    def down(self) -> None:
        run("kind", "delete", "cluster", "--name", self.name, timeout=300, check=False)
        for node in self.worker_names():
            pool = self.host_pool(node)
            if not pool.device:
                # Not created by this process: find the device from the image file.
                attached = (
                    run("losetup", "-j", str(pool.image), check=False).stdout if pool.image.exists() else ""
                )
                pool.device = attached.split(":", 1)[0] if attached else ""
            pool.destroy()

    def kind_config(self) -> dict[str, Any]:
        nodes: list[dict[str, Any]] = [{"role": "control-plane"}]
        for node in self.worker_names():
            mount = {
                "hostPath": str(self.host_pool(node).mountpoint),
                "containerPath": POOL_IN_NODE,
                "propagation": "HostToContainer",
            }
            nodes.append({"role": "worker", "extraMounts": [mount]})
        return {"kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4", "name": self.name, "nodes": nodes}

    # --- steps --------------------------------------------------------------------------------

    def api(self) -> Any:
        from kubernetes import config

        load: Any = config.new_client_from_config  # untyped in the client
        return load(config_file=str(self.kubeconfig))

    def label_workers(self) -> None:
        from kubernetes import client

        core: Any = client.CoreV1Api(self.api())
        for node in self.worker_names():
            core.patch_node(node, {"metadata": {"labels": {POOL_LABEL: "true"}}})

    def apply(self, docs: list[dict[str, Any]]) -> None:
        from kubernetes import utils
        from kubernetes.client.exceptions import ApiException

        api = self.api()
        for doc in docs:
            try:
                create: Any = utils.create_from_dict  # untyped in the client
                create(api, doc)
            except utils.FailToCreateError as e:
                if not all(isinstance(x, ApiException) and x.status == 409 for x in e.api_exceptions):
                    raise

    def install_snapshot_support(self) -> None:
        crds = [d for url in SNAPSHOT_CRD_URLS for d in fetch_yaml(url)]
        self.apply(crds)
        from kubernetes import client

        ext: Any = client.ApiextensionsV1Api(self.api())
        for crd in crds:
            name = crd["metadata"]["name"]
            wait_for(f"CRD {name} established", functools.partial(crd_established, ext, name), 60)
        self.apply(
            distributed_snapshot_controller([d for url in SNAPSHOT_CONTROLLER_URLS for d in fetch_yaml(url)])
        )

    def build_and_load_image(self) -> None:
        run("docker", "build", "-t", DRIVER_IMAGE, str(REPO), timeout=1800)
        run("kind", "load", "docker-image", DRIVER_IMAGE, "--name", self.name, timeout=600)

    def chart_values(self) -> dict[str, Any]:
        repository, tag = DRIVER_IMAGE.split(":")
        return {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "pool": {"mode": "existing", "path": POOL_IN_NODE},
            "logLevel": "debug",
            "metrics": {"enabled": True},
            # Short poll so capacity objects show up within the test timeouts.
            "node": {"provisioner": {"capacityPollInterval": "15s"}},
        }

    def install_chart(self) -> None:
        from kubernetes import client

        core: Any = client.CoreV1Api(self.api())
        labels = {f"pod-security.kubernetes.io/{mode}": "privileged" for mode in ("enforce", "audit", "warn")}
        core.create_namespace({"metadata": {"name": NAMESPACE, "labels": labels}})
        self.helm("install")

    def helm(self, action: str, values: dict[str, Any] | None = None) -> Any:
        return helm_release(self.kubeconfig, action, values or self.chart_values())

    def wait_for_driver(self) -> None:
        from kubernetes import client

        storage: Any = client.StorageV1Api(self.api())

        def registered(node: str) -> bool:
            drivers = storage.read_csi_node(node).spec.drivers or []
            return any(d.name == DRIVER_NAME for d in drivers)

        for node in self.worker_names():
            wait_for(f"{DRIVER_NAME} registered on {node}", functools.partial(registered, node), 300)

    def diagnostics(self) -> str:
        return release_logs(self.api())


def fetch_yaml(url: str) -> list[dict[str, Any]]:
    log(f"GET {url}")
    with urllib.request.urlopen(url, timeout=60) as response:
        text = response.read().decode()
    return [d for d in yaml.safe_load_all(text) if d]


def distributed_snapshot_controller(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The upstream snapshot-controller manifests, in kube-system, with distributed snapshotting on:
    the --enable-distributed-snapshotting flag and the nodes rule upstream leaves commented out."""
    out = []
    for doc in json.loads(json.dumps(docs)):
        kind = doc["kind"]
        if kind not in ("ClusterRole", "ClusterRoleBinding"):
            doc["metadata"]["namespace"] = SNAPSHOT_CONTROLLER_NAMESPACE
        for subject in doc.get("subjects", []):
            subject["namespace"] = SNAPSHOT_CONTROLLER_NAMESPACE
        if kind == "ClusterRole":
            doc["rules"].append(
                {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}
            )
        if kind == "Deployment":
            doc["spec"]["replicas"] = 1
            for container in doc["spec"]["template"]["spec"]["containers"]:
                container.setdefault("args", []).append("--enable-distributed-snapshotting")
        out.append(doc)
    return out


def e2e_cluster(keep: bool = False) -> contextlib.AbstractContextManager[Cluster]:
    cluster = Cluster()
    kept = f"keeping cluster {cluster.name}; remove it with `python -m tests.e2e.kind_cluster down`"
    return brought_up(cluster, keep, kept)


def main(argv: list[str]) -> int:
    action = command(argv, "tests.e2e.kind_cluster")
    if action is None:
        return 2
    missing = missing_prerequisites()
    if missing:
        print("cannot run: missing " + "; ".join(missing), file=sys.stderr)
        return 1
    cluster = Cluster()
    if action == "up":
        cluster.preflight()
        cluster.up()
        print(f"export KUBECONFIG={cluster.kubeconfig}")
    else:
        cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
