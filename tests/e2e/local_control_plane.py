"""The control plane of the local e2e cluster: etcd, kube-apiserver, kube-controller-manager and
kube-scheduler, host processes on 127.0.0.1 only, each started once the one it needs answers."""

from __future__ import annotations

import ssl
import urllib.request
from pathlib import Path

from tests.e2e.local_processes import HostProcesses
from tests.e2e.steps import wait_for

API_PORT = 6443
API_SERVER = f"https://127.0.0.1:{API_PORT}"
ETCD_CLIENT, ETCD_PEER = "http://127.0.0.1:2379", "http://127.0.0.1:2380"
# The Service network exists only as numbers in API objects: nothing routes it. A REJECT rule
# keeps any client that dials it anyway from sending a packet off the machine.
SERVICE_CIDR = "10.96.0.0/24"


def start_control_plane(processes: HostProcesses, work: Path, pki: Path, binaries: Path, etcd: Path) -> None:
    processes.start("etcd", [
        str(etcd), "--name=e2e", f"--data-dir={work / 'etcd'}",
        f"--listen-client-urls={ETCD_CLIENT}", f"--advertise-client-urls={ETCD_CLIENT}",
        f"--listen-peer-urls={ETCD_PEER}", f"--initial-advertise-peer-urls={ETCD_PEER}",
        f"--initial-cluster=e2e={ETCD_PEER}", "--listen-metrics-urls=",
        "--quota-backend-bytes=1073741824", "--unsafe-no-fsync",
    ])  # fmt: skip
    wait_for("etcd healthy", lambda: processes.alive("etcd") and http_ok(f"{ETCD_CLIENT}/health"), 60, 0.5)
    processes.start("kube-apiserver", [
        str(binaries / "kube-apiserver"), "--bind-address=127.0.0.1", f"--secure-port={API_PORT}",
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
    wait_for("kube-apiserver ready", lambda: processes.alive("kube-apiserver") and api_ready(pki), 180, 1)
    common = ["--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false"]
    cm = str(work / "controller-manager.kubeconfig")
    processes.start("kube-controller-manager", [
        str(binaries / "kube-controller-manager"), f"--kubeconfig={cm}",
        f"--authentication-kubeconfig={cm}", f"--authorization-kubeconfig={cm}",
        "--use-service-account-credentials", f"--service-account-private-key-file={pki / 'sa.key'}",
        f"--root-ca-file={pki / 'ca.crt'}", f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle", *common,
    ])  # fmt: skip
    sched = str(work / "scheduler.kubeconfig")
    processes.start("kube-scheduler", [
        str(binaries / "kube-scheduler"), f"--kubeconfig={sched}",
        f"--authentication-kubeconfig={sched}", f"--authorization-kubeconfig={sched}", *common,
    ])  # fmt: skip


def api_ready(pki: Path) -> bool:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    return http_ok(f"{API_SERVER}/readyz", context)


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False
