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

Every process's pid is saved under the work directory, so `down` (another process, or the same
one after a failure) stops them all, unmounts what the cluster mounted, removes its cgroups,
detaches the loop device, deletes its iptables rule and restores the sysctls the kubelet changed.

    python -m tests.e2e.local_cluster up|down
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.cluster import (
    DRIVER_IMAGE,
    DRIVER_NAME,
    NAMESPACE,
    POOL_LABEL,
    crd_established,
    helm_release,
    log,
    release_logs,
    run,
    wait_for,
)
from tests.e2e.images import BUSYBOX_IMAGE, PAUSE_IMAGE
from tests.e2e.local_pki import make_pki, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "btrfs-csi"
CACHE = Path(os.environ.get("E2E_CACHE", "/var/cache/btrfs-csi-e2e"))
WORK = Path(os.environ.get("BTRFS_CSI_E2E_LOCAL_DIR", "/var/lib/btrfs-csi-e2e"))
VERSIONS = dict(
    line.split("=", 1)
    for line in (REPO / "tools/e2e/versions.env").read_text().splitlines()
    if line and not line.startswith("#")
)
KUBERNETES_VERSION = VERSIONS["KUBERNETES_VERSION"]

NODE = "127.0.0.1"  # the node's name and its only address
API_PORT = 6443
API_SERVER = f"https://127.0.0.1:{API_PORT}"
ETCD_CLIENT, ETCD_PEER = "http://127.0.0.1:2379", "http://127.0.0.1:2380"
# The Service network exists only as numbers in API objects: nothing routes it. A REJECT rule
# keeps any client that dials it anyway from sending a packet off the machine.
SERVICE_CIDR = "10.96.0.0/24"
KUBELET_DIR = Path("/var/lib/kubelet")  # the chart's default kubeletDir
POOL_PATH = Path("/var/lib/btrfs-csi")  # the chart's default pool.path
POOL_SIZE = 4 << 30
# The kubelet sets these at start (protectKernelDefaults off); down restores them.
KUBELET_SYSCTLS = [
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
]  # fmt: skip
CGROUP_ROOT = Path("/sys/fs/cgroup")
SNAPSHOTTER_TAG = "v8.6.0"

CNI_PLUGIN = r"""#!/bin/bash
# e2e-loopback CNI plugin: a veth pair with BOTH ends inside the pod's network namespace, a 127.x
# address on eth0 and lo up. Nothing can leave the pod; the kubelet and containerd are satisfied.
# Installed as `loopback` too, which containerd calls for lo: then it only brings lo up.
set -eu
config=$(cat)
version=$(printf %s "$config" | grep -o '"cniVersion": *"[^"]*"' | head -n 1 | cut -d'"' -f4)
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}' ;;
ADD)
    if [ "$CNI_IFNAME" = lo ]; then
        nsenter --net="$CNI_NETNS" ip link set lo up
        addr=127.0.0.1/8
    else
        h=$(printf %s "$CNI_CONTAINERID" | sha256sum | cut -c1-4)
        addr="127.1.$((16#${h:0:2})).$((16#${h:2:2} % 254 + 1))/32"
        nsenter --net="$CNI_NETNS" sh -ec "ip link set lo up
            ip link add $CNI_IFNAME type veth peer name e2e-peer
            ip addr add $addr dev $CNI_IFNAME
            ip link set $CNI_IFNAME up
            ip link set e2e-peer up"
    fi
    result='{"cniVersion":"%s","interfaces":[{"name":"%s","sandbox":"%s"}],'
    result="$result"'"ips":[{"version":"4","address":"%s","interface":0}]}\n'
    printf "$result" "$version" "$CNI_IFNAME" "$CNI_NETNS" "$addr"
    ;;
*) ;;  # DEL/CHECK: the veth pair goes away with the namespace
esac
"""


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

    # --- processes ---------------------------------------------------------------------------

    def start(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        log(f"start {name}: {' '.join(args)}")
        out = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, **(env or {})},
        )  # fmt: skip
        out.close()
        (self.pids / f"{name}.pid").write_text(str(process.pid))

    def running(self, name: str) -> bool:
        pid = self.pid(name)
        return pid is not None and Path(f"/proc/{pid}").exists()

    def pid(self, name: str) -> int | None:
        path = self.pids / f"{name}.pid"
        return int(path.read_text()) if path.exists() else None

    def alive(self, name: str) -> bool:
        if not self.running(name):
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited; the end of its log:\n{tail}")
        return True

    def stop(self, name: str, timeout: float = 30) -> None:
        pid = self.pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                reap(pid)
                time.sleep(0.2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            reap(pid)
            (self.pids / f"{name}.pid").unlink(missing_ok=True)

    # --- up ----------------------------------------------------------------------------------

    def preflight(self) -> None:
        missing = [p for p in ("kube-apiserver", "kubelet", "kubectl") if not (self.bin / p).exists()]
        if missing or not (CACHE / f"etcd-{VERSIONS['ETCD_VERSION']}/etcd").exists():
            raise RuntimeError(f"binaries missing under {CACHE}: run tools/e2e/build first")
        if self.pids.exists() and any(self.pids.iterdir()):
            raise RuntimeError(f"a local cluster is already up ({self.pids}): `make e2e-down` first")
        for path in (KUBELET_DIR, POOL_PATH):
            if is_mountpoint(path) or (path.exists() and any(path.iterdir())):
                raise RuntimeError(f"{path} is in use: refusing to run a second kubelet over it")

    def up(self) -> None:
        started = time.monotonic()
        self.preflight()
        shutil.rmtree(self.logs, ignore_errors=True)  # this run's logs only, for diagnostics
        for d in (self.work, self.logs, self.pids):
            d.mkdir(parents=True, exist_ok=True)
        self.save_sysctls()
        (self.work / "iptables-chains.json").write_text(json.dumps(iptables_chains()))
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
        self.start("etcd", [
            str(etcd), "--name=e2e", f"--data-dir={self.work / 'etcd'}",
            f"--listen-client-urls={ETCD_CLIENT}", f"--advertise-client-urls={ETCD_CLIENT}",
            f"--listen-peer-urls={ETCD_PEER}", f"--initial-advertise-peer-urls={ETCD_PEER}",
            f"--initial-cluster=e2e={ETCD_PEER}", "--listen-metrics-urls=",
            "--quota-backend-bytes=1073741824", "--unsafe-no-fsync",
        ])  # fmt: skip
        wait_for("etcd healthy", lambda: self.alive("etcd") and http_ok(f"{ETCD_CLIENT}/health"), 60, 0.5)
        pki = self.pki
        self.start("kube-apiserver", [
            str(self.bin / "kube-apiserver"), "--bind-address=127.0.0.1", f"--secure-port={API_PORT}",
            "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--etcd-servers={ETCD_CLIENT}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=Hostname,InternalIP",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=Node,RBAC", "--allow-privileged=true", "--profiling=false",
        ])  # fmt: skip
        wait_for("kube-apiserver ready", lambda: self.alive("kube-apiserver") and self.api_ready(), 180, 1)
        common = ["--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false"]
        cm = str(self.work / "controller-manager.kubeconfig")
        self.start("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"), f"--kubeconfig={cm}",
            f"--authentication-kubeconfig={cm}", f"--authorization-kubeconfig={cm}",
            "--use-service-account-credentials", f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}", f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle", *common,
        ])  # fmt: skip
        sched = str(self.work / "scheduler.kubeconfig")
        self.start("kube-scheduler", [
            str(self.bin / "kube-scheduler"), f"--kubeconfig={sched}",
            f"--authentication-kubeconfig={sched}", f"--authorization-kubeconfig={sched}", *common,
        ])  # fmt: skip

    def api_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        return http_ok(f"{API_SERVER}/readyz", context)

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
        base = self.work / "containerd"
        cni_bin, cni_conf = self.work / "cni" / "bin", self.work / "cni" / "conf"
        for d in (base, cni_bin, cni_conf):
            d.mkdir(parents=True, exist_ok=True)
        for name in ("e2e-loopback", "loopback"):
            plugin = cni_bin / name
            plugin.write_text(CNI_PLUGIN)
            plugin.chmod(0o755)
        (cni_conf / "10-e2e-loopback.conflist").write_text(json.dumps(
            {"cniVersion": "0.4.0", "name": "e2e-loopback", "plugins": [{"type": "e2e-loopback"}]}
        ))  # fmt: skip
        cri = {
            "sandbox_image": PAUSE_IMAGE,
            # root lacks CAP_SYS_RESOURCE here: without this every sandbox fails in runc.
            "restrict_oom_score_adj": True,
            "disable_apparmor": True,
            "stream_server_address": "127.0.0.1",
            "stream_server_port": "0",
            "containerd": {
                "snapshotter": "overlayfs",
                "default_runtime_name": "runc",
                "runtimes": {
                    "runc": {"runtime_type": "io.containerd.runc.v2", "options": {"SystemdCgroup": False}}
                },
            },
            "cni": {"bin_dir": str(cni_bin), "conf_dir": str(cni_conf)},
        }
        config = {
            "version": 2,
            "root": str(base / "root"),
            "state": str(base / "state"),
            "grpc": {"address": str(self.containerd_socket())},
            "ttrpc": {"address": str(base / "containerd.sock.ttrpc")},
            "plugins": {
                "io.containerd.grpc.v1.cri": cri,
                "io.containerd.internal.v1.opt": {"path": str(base / "opt")},
            },
        }
        (base / "config.toml").write_text(to_toml(config))
        self.start("containerd", ["containerd", "--config", str(base / "config.toml")])
        wait_for("containerd", lambda: self.alive("containerd") and self.ctr_ok(), 60, 0.5)

    def ctr(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        socket = str(self.containerd_socket())
        return run("ctr", "--address", socket, "-n", "k8s.io", *args, timeout=timeout, check=check)

    def ctr_ok(self) -> bool:
        return (
            self.containerd_socket().exists() and self.ctr("version", timeout=10, check=False).returncode == 0
        )

    def import_images(self) -> None:
        archives = sorted(images_dir().glob("*.tar"))
        if not archives:
            raise RuntimeError(f"no image archives in {images_dir()}: run python -m tests.e2e.images first")
        for archive in archives:
            self.ctr("images", "import", "--no-unpack=false", str(archive))

    def start_kubelet(self) -> None:
        KUBELET_DIR.mkdir(parents=True, exist_ok=True)
        (KUBELET_DIR / ".btrfs-csi-e2e").write_text("made by tests/e2e/local_cluster.py\n")
        pki = self.pki
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE,
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 10248,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(pki / "ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": str(pki / "kubelet-serving.crt"),
            "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket()}",
            # Nothing can be pulled again: never collect images.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "serializeImagePulls": False,
            "resolvConf": "/etc/resolv.conf",
            "volumeStatsAggPeriod": "10s",
        }
        path = self.work / "kubelet.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.start("kubelet", [
            str(self.bin / "kubelet"), f"--config={path}", f"--kubeconfig={self.work / 'kubelet.kubeconfig'}",
            f"--hostname-override={NODE}", f"--root-dir={KUBELET_DIR}", "--v=2",
        ])  # fmt: skip
        from kubernetes import client

        core: Any = client.CoreV1Api(self.api())

        def ready() -> bool:
            self.alive("kubelet")
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
        self.stop("kubelet")
        if self.running("containerd"):
            self.kill_pods()
        self.stop("containerd")
        self.kill_leftover_shims()
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            self.stop(name)
        self.kill_cgroup_processes()
        self.unmount_all()
        self.remove_cgroups()
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
        self.remove_kubelet_chains()
        self.restore_sysctls()
        for d in ("containerd", "etcd", "cni"):
            shutil.rmtree(self.work / d, ignore_errors=True)
        if self.pids.exists():
            shutil.rmtree(self.pids)
        log("local cluster down")

    def kill_pods(self) -> None:
        tasks = self.ctr("tasks", "list", "-q", timeout=30, check=False).stdout.split()
        for task in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", task, timeout=30, check=False)
        for task in tasks:
            self.ctr("tasks", "delete", "-f", task, timeout=30, check=False)

    def kill_leftover_shims(self) -> None:
        needle = str(self.containerd_socket()).encode()
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit():
                with contextlib.suppress(OSError):
                    cmdline = (proc / "cmdline").read_bytes()
                    if b"containerd-shim" in cmdline and needle in cmdline:
                        os.kill(int(proc.name), signal.SIGKILL)

    def kill_cgroup_processes(self) -> None:
        for cgroup in pod_cgroups():
            with contextlib.suppress(OSError):
                for pid in (cgroup / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)

    def remove_cgroups(self) -> None:
        for cgroup in sorted(pod_cgroups(), key=lambda p: len(p.parts), reverse=True):
            deadline = time.monotonic() + 10
            while cgroup.exists():
                try:
                    cgroup.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        log(f"cannot remove cgroup {cgroup}")
                        break
                    time.sleep(0.2)

    def unmount_all(self) -> None:
        def ours(target: str) -> bool:
            under = any(
                target == str(r) or target.startswith(f"{r}/") for r in (KUBELET_DIR, self.work, POOL_PATH)
            )
            return under or target.startswith(("/run/netns/cni-", "/var/run/netns/cni-"))

        for target in reversed(mount_targets()):
            if ours(target) and run("umount", target, check=False).returncode != 0:
                run("umount", "-l", target, check=False)
        for netns in Path("/run/netns").glob("cni-*"):
            netns.unlink(missing_ok=True)

    def remove_kubelet_chains(self) -> None:
        """The KUBE-* chains the kubelet made (its canaries and KUBE-FIREWALL, which drops
        non-loopback traffic to 127/8) and the rules jumping to them; not what was there before."""
        path = self.work / "iptables-chains.json"
        if not path.exists():
            return
        before = {tuple(c) for c in json.loads(path.read_text())}
        made = [c for c in iptables_chains() if c[2].startswith("KUBE-") and c not in before]
        for tool, table, chain in made:
            for rule in iptables_rules(tool, table):
                if rule[-2:] == ["-j", chain]:
                    run(tool, "-w", "-t", table, "-D", *rule[1:], check=False)
        for tool, table, chain in made:
            run(tool, "-w", "-t", table, "-F", chain, check=False)
            run(tool, "-w", "-t", table, "-X", chain, check=False)
        path.unlink()

    def save_sysctls(self) -> None:
        saved = {key: (Path("/proc/sys") / key).read_text().strip() for key in KUBELET_SYSCTLS}
        (self.work / "sysctls.json").write_text(json.dumps(saved))

    def restore_sysctls(self) -> None:
        path = self.work / "sysctls.json"
        if path.exists():
            for key, value in json.loads(path.read_text()).items():
                with contextlib.suppress(OSError):
                    (Path("/proc/sys") / key).write_text(value)
            path.unlink()

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


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def iptables_chains() -> list[tuple[str, str, str]]:
    """(tool, table, chain) of every chain in iptables and ip6tables."""
    found = []
    for tool in ("iptables", "ip6tables"):
        if shutil.which(f"{tool}-save") is None:
            continue
        table = ""
        dump = subprocess.run([f"{tool}-save"], capture_output=True, text=True, timeout=60).stdout
        for line in dump.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                found.append((tool, table, line[1:].split()[0]))
    return found


def iptables_rules(tool: str, table: str) -> list[list[str]]:
    """The rules of one table as `-A CHAIN ...` argument lists."""
    dump = subprocess.run([f"{tool}-save", "-t", table], capture_output=True, text=True, timeout=60).stdout
    return [shlex.split(line) for line in dump.splitlines() if line.startswith("-A ")]


def is_mountpoint(path: Path) -> bool:
    return str(path) in mount_targets()


def mount_targets() -> list[str]:
    """Mount points in mount order (octal escapes decoded)."""
    targets = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4]
        targets.append(target.encode().decode("unicode_escape"))
    return targets


def pod_cgroups() -> list[Path]:
    """Every cgroup directory the kubelet and runc made (kubepods* under each hierarchy)."""
    found: list[Path] = []
    for hierarchy in CGROUP_ROOT.iterdir():
        for top in hierarchy.glob("kubepods*"):
            if top.is_dir():
                found.extend(p for p in top.rglob("*") if p.is_dir())
                found.append(top)
    return found


def to_toml(table: dict[str, Any], prefix: str = "") -> str:
    """The TOML of a nested dict of str/bool/int (enough for containerd's config)."""
    scalars, tables = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            name = (
                f"{prefix}.{json.dumps(key) if '.' in key else key}"
                if prefix
                else (json.dumps(key) if "." in key else key)
            )
            tables.append(f"\n[{name}]\n" + to_toml(value, name))
        else:
            scalars.append(f"{key} = {json.dumps(value)}")
    return "\n".join(scalars) + "".join(tables) + "\n"


@contextlib.contextmanager
def local_cluster(keep: bool = False) -> Iterator[LocalCluster]:
    cluster = LocalCluster()
    cluster.preflight()  # outside the try: never tear down a cluster this run did not make
    try:
        cluster.up()
        yield cluster
    finally:
        if keep:
            log("keeping the local cluster; stop it with `make e2e-down`")
        else:
            cluster.down()


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("up", "down"):
        print("usage: python -m tests.e2e.local_cluster up|down", file=sys.stderr)
        return 2
    cluster = LocalCluster()
    if argv[0] == "up":
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
