"""A real single-node Kubernetes on this machine, on 127.0.0.1 only, for the e2e suite.

Everything runs as host processes, built from source by tools/e2e/build into a cache directory:
etcd, kube-apiserver, kube-controller-manager, kube-scheduler, a standalone containerd (own
config, socket and root) and the kubelet, whose node is named 127.0.0.1 so every address the
cluster hands out is loopback. Images come from docker-save archives (tools/e2e/images.py)
imported with ctr: nothing is pulled. Pods that are not on the host network get a private
network namespace from a tiny CNI plugin (a veth pair with both ends inside the pod): nothing
leaves them. The btrfs pool is a loop device mounted at the chart's pool path, the node is
labelled, and the chart is installed with the Helm engine of helm-python-sdk, with the values a
user of an air-gapped cluster without pod network or kube-proxy would set (image references,
pull policy, host network, the API server address).

Every process's pid is saved under the work directory (local_processes.py), so `down` (another
process, or the same one after a failure) stops them all, unmounts what the cluster mounted, removes
its cgroups, detaches the loop device, deletes its iptables rule and restores the sysctls the kubelet
changed (local_host.py). The configuration of containerd, its CNI plugin and the kubelet: local_node.py.

    python -m tests.e2e.local_cluster up|down
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import ssl
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from tests.e2e import local_host as host
from tests.e2e.images import BUSYBOX_IMAGE
from tests.e2e.local_control_plane import API_PORT, API_SERVER, SERVICE_CIDR, start_control_plane
from tests.e2e.local_node import Ctr, kubelet_config, write_containerd_config
from tests.e2e.local_pki import make_pki, write_kubeconfig
from tests.e2e.local_processes import HostProcesses
from tests.e2e.release import (
    DRIVER_IMAGE,
    DRIVER_NAME,
    NAMESPACE,
    POOL_LABEL,
    crd_established,
    helm_release,
    release_logs,
)
from tests.e2e.steps import brought_up, command, log, run, wait_for

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("E2E_CACHE", "/var/cache/btrfs-csi-e2e"))
WORK = Path(os.environ.get("BTRFS_CSI_E2E_LOCAL_DIR", "/var/lib/btrfs-csi-e2e"))
VERSIONS = dict(
    line.split("=", 1)
    for line in (REPO / "tools/e2e/versions.env").read_text().splitlines()
    if line and not line.startswith("#")
)
KUBERNETES_VERSION = VERSIONS["KUBERNETES_VERSION"]

NODE = "127.0.0.1"  # the node's name and its only address
KUBELET_DIR = Path("/var/lib/kubelet")  # the chart's default kubeletDir
POOL_PATH = Path("/var/lib/btrfs-csi")  # the chart's default pool.path
POOL_SIZE = 4 << 30
SNAPSHOTTER_TAG = "v8.6.0"


def images_dir() -> Path:
    return WORK / "images"


class LocalCluster:
    provider = "local"
    pod_image = BUSYBOX_IMAGE

    def __init__(self, work: Path = WORK) -> None:
        self.work = work
        self.pki = work / "pki"
        self.logs = work / "logs"
        self.pids = work / "pids"
        self.bin = CACHE / f"kubernetes-{KUBERNETES_VERSION}"
        self.processes = HostProcesses(self.logs, self.pids)
        self.ctr = Ctr(self.containerd_socket())

    # --- what the suite uses ---------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.work / "admin.kubeconfig"

    def worker_names(self) -> list[str]:
        return [NODE]

    def pool_path(self, node: str) -> Path:
        assert node == NODE, node
        return POOL_PATH

    def version(self) -> str:
        return KUBERNETES_VERSION

    def api(self) -> Any:
        from kubernetes import config

        load: Any = config.new_client_from_config
        return load(config_file=str(self.kubeconfig))

    def kubelet_get(self, node: str, path: str) -> str:
        """GET on the kubelet's HTTPS port with the admin certificate. The API server's node proxy
        refuses loopback addresses, and this node's only address is 127.0.0.1."""
        assert node == NODE, node
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        with urllib.request.urlopen(f"https://{NODE}:10250/{path}", context=context, timeout=30) as r:
            text: str = r.read().decode()
        return text

    # --- up ----------------------------------------------------------------------------------

    def preflight(self) -> None:
        missing = [p for p in ("kube-apiserver", "kubelet", "kubectl") if not (self.bin / p).exists()]
        if missing or not (CACHE / f"etcd-{VERSIONS['ETCD_VERSION']}/etcd").exists():
            raise RuntimeError(f"binaries missing under {CACHE}: run tools/e2e/build first")
        if self.pids.exists() and any(self.pids.iterdir()):
            raise RuntimeError(f"a local cluster is already up ({self.pids}): `make e2e-down` first")
        for path in (KUBELET_DIR, POOL_PATH):
            if host.is_mountpoint(path) or (path.exists() and any(path.iterdir())):
                raise RuntimeError(f"{path} is in use: refusing to run a second kubelet over it")

    def up(self) -> None:
        """After preflight()."""
        started = time.monotonic()
        shutil.rmtree(self.logs, ignore_errors=True)  # this run's logs only, for diagnostics
        for d in (self.work, self.logs, self.pids):
            d.mkdir(parents=True, exist_ok=True)
        host.save_sysctls(self.work)
        host.save_iptables_chains(self.work)
        run("iptables", "-w", "-I", "OUTPUT", "-d", SERVICE_CIDR, "-j", "REJECT")
        make_pki(self.pki, NODE)
        for user in ("admin", "controller-manager", "scheduler", "kubelet"):
            write_kubeconfig(self.work / f"{user}.kubeconfig", self.pki, user, API_SERVER)
        self.start_control_plane()
        self.make_pool()
        self.start_containerd()
        self.import_images()
        self.start_kubelet()
        self.install()
        log(f"local cluster up in {time.monotonic() - started:.0f}s")

    def start_control_plane(self) -> None:
        etcd = CACHE / f"etcd-{VERSIONS['ETCD_VERSION']}/etcd"
        start_control_plane(self.processes, self.work, self.pki, self.bin, etcd)

    def make_pool(self) -> None:
        image = self.work / "pool.img"
        with open(image, "wb") as f:
            f.truncate(POOL_SIZE)
        device = run("losetup", "--find", "--show", str(image)).stdout.strip()
        (self.work / "pool.device").write_text(device)
        run("mkfs.btrfs", "--quiet", "--force", device)
        POOL_PATH.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "btrfs", device, str(POOL_PATH))
        # The driver container mounts the pool HostToContainer, which the runtime grants only on a
        # shared (or slave) mount; `/` is private on this machine (systemd hosts share it).
        run("mount", "--make-rshared", str(POOL_PATH))

    def containerd_socket(self) -> Path:
        return self.work / "containerd" / "containerd.sock"

    def start_containerd(self) -> None:
        config = write_containerd_config(self.work, self.containerd_socket())
        self.processes.start("containerd", ["containerd", "--config", str(config)])
        wait_for("containerd", lambda: self.processes.alive("containerd") and self.ctr.ok(), 60, 0.5)

    def import_images(self) -> None:
        archives = sorted(images_dir().glob("*.tar"))
        if not archives:
            raise RuntimeError(f"no image archives in {images_dir()}: run python -m tests.e2e.images first")
        for archive in archives:
            self.ctr("images", "import", "--no-unpack=false", str(archive))

    def start_kubelet(self) -> None:
        KUBELET_DIR.mkdir(parents=True, exist_ok=True)
        (KUBELET_DIR / ".btrfs-csi-e2e").write_text("made by tests/e2e/local_cluster.py\n")
        config = kubelet_config(NODE, self.pki, self.containerd_socket())
        path = self.work / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.processes.start("kubelet", [
            str(self.bin / "kubelet"), f"--config={path}", f"--kubeconfig={self.work / 'kubelet.kubeconfig'}",
            f"--hostname-override={NODE}", f"--root-dir={KUBELET_DIR}", "--v=2",
        ])  # fmt: skip
        from kubernetes import client

        core: Any = client.CoreV1Api(self.api())

        def ready() -> bool:
            self.processes.alive("kubelet")
            node = core.read_node(NODE)
            return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

        wait_for(f"node {NODE} Ready", ready, 180)
        core.patch_node(NODE, {"metadata": {"labels": {POOL_LABEL: "true"}}})

    def chart_values(self) -> dict[str, Any]:
        repository, tag = DRIVER_IMAGE.split(":")
        never = {"image": {"pullPolicy": "Never"}}  # every image is imported: never reach for a registry
        return {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "node": {name: never for name in ("registrar", "provisioner", "snapshotter", "livenessProbe")},
            "resizer": never,
            # No pod network and no kube-proxy on this cluster.
            "hostNetwork": True,
            "apiServer": {"host": "127.0.0.1", "port": API_PORT},
            # The cluster has no snapshot-controller of its own.
            "snapshotController": {"enabled": True, **never},
        }

    def install(self) -> None:
        from kubernetes import client, utils

        api = self.api()
        crd_dir = CACHE / f"snapshot-crds-{SNAPSHOTTER_TAG}"
        ext: Any = client.ApiextensionsV1Api(api)
        for path in sorted(crd_dir.glob("*.yaml")):
            create: Any = utils.create_from_yaml
            create(api, str(path))  # the CRDs are cluster-scoped: installed once per cluster
        for path in sorted(crd_dir.glob("*.yaml")):
            name = yaml.safe_load(path.read_text())["metadata"]["name"]
            wait_for(f"CRD {name}", functools.partial(crd_established, ext, name), 60, 1)
        core: Any = client.CoreV1Api(api)
        labels = {f"pod-security.kubernetes.io/{m}": "privileged" for m in ("enforce", "audit", "warn")}
        core.create_namespace({"metadata": {"name": NAMESPACE, "labels": labels}})
        self.helm("install")
        storage: Any = client.StorageV1Api(api)

        def registered() -> bool:
            drivers = storage.read_csi_node(NODE).spec.drivers or []
            return any(d.name == DRIVER_NAME for d in drivers)

        wait_for(f"{DRIVER_NAME} registered on {NODE}", registered, 300)

    def helm(self, action: str, values: dict[str, Any] | None = None) -> Any:
        return helm_release(self.kubeconfig, action, values or self.chart_values())

    # --- down --------------------------------------------------------------------------------

    def down(self) -> None:
        """Stops and removes everything `up` made, whatever state it reached. Idempotent."""
        self.processes.stop("kubelet")
        if self.processes.running("containerd"):
            self.ctr.kill_tasks()
        self.processes.stop("containerd")
        host.kill_leftover_shims(self.containerd_socket())
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            self.processes.stop(name)
        host.kill_cgroup_processes()
        host.unmount_all((KUBELET_DIR, self.work, POOL_PATH))
        host.remove_cgroups()
        device_file = self.work / "pool.device"
        if device_file.exists():
            run("losetup", "-d", device_file.read_text().strip(), check=False)
            device_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            (self.work / "pool.img").unlink()
        with contextlib.suppress(OSError):
            POOL_PATH.rmdir()
        if (KUBELET_DIR / ".btrfs-csi-e2e").exists():
            shutil.rmtree(KUBELET_DIR, ignore_errors=True)
        for d in ("/var/log/pods", "/var/log/containers"):
            shutil.rmtree(d, ignore_errors=True)
        while (
            run("iptables", "-w", "-D", "OUTPUT", "-d", SERVICE_CIDR, "-j", "REJECT", check=False).returncode
            == 0
        ):
            pass
        host.remove_kubelet_chains(self.work)
        host.restore_sysctls(self.work)
        for d in ("containerd", "etcd", "cni"):
            shutil.rmtree(self.work / d, ignore_errors=True)
        if self.pids.exists():
            shutil.rmtree(self.pids)
        log("local cluster down")

    def diagnostics(self) -> str:
        """The release's container logs, and the kubelet's and containerd's last errors."""
        out = [release_logs(self.api())]
        for name in ("kubelet", "containerd"):
            path = self.logs / f"{name}.log"
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()
                errors = [line for line in lines if line.startswith("E") or "level=error" in line]
                out.append(f"--- {name}: last errors\n" + "\n".join(errors[-20:]))
        return "\n".join(out)


def local_cluster(keep: bool = False) -> contextlib.AbstractContextManager[LocalCluster]:
    return brought_up(LocalCluster(), keep, "keeping the local cluster; stop it with `make e2e-down`")


def main(argv: list[str]) -> int:
    action = command(argv, "tests.e2e.local_cluster")
    if action is None:
        return 2
    cluster = LocalCluster()
    if action == "up":
        cluster.preflight()
        try:
            cluster.up()
        except BaseException:
            log("up failed: stopping what was started")
            cluster.down()
            raise
        print(f"export KUBECONFIG={cluster.kubeconfig}  # kubectl: {cluster.bin / 'kubectl'}")
    else:
        cluster.down()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
