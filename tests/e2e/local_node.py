"""The node of the local e2e cluster: containerd's configuration, with a CNI plugin that keeps every
pod's network inside the pod, ctr on that containerd, and the kubelet's configuration."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.e2e.images import PAUSE_IMAGE
from tests.e2e.steps import run

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


def write_containerd_config(work: Path, socket: Path) -> Path:
    """containerd's config.toml under <work>/containerd, its CNI plugin and network under <work>/cni;
    returns the config's path."""
    base = work / "containerd"
    cni_bin, cni_conf = work / "cni" / "bin", work / "cni" / "conf"
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
        "grpc": {"address": str(socket)},
        "ttrpc": {"address": str(base / "containerd.sock.ttrpc")},
        "plugins": {
            "io.containerd.grpc.v1.cri": cri,
            "io.containerd.internal.v1.opt": {"path": str(base / "opt")},
        },
    }
    path = base / "config.toml"
    path.write_text(to_toml(config))
    return path


class Ctr:
    """ctr on the node's containerd, in the namespace the kubelet uses."""

    def __init__(self, socket: Path) -> None:
        self.socket = socket

    def __call__(
        self, *args: str, timeout: float = 600, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return run("ctr", "--address", str(self.socket), "-n", "k8s.io", *args, timeout=timeout, check=check)

    def ok(self) -> bool:
        return self.socket.exists() and self("version", timeout=10, check=False).returncode == 0

    def kill_tasks(self) -> None:
        """Every container of every pod, killed and deleted."""
        tasks = self("tasks", "list", "-q", timeout=30, check=False).stdout.split()
        for task in tasks:
            self("tasks", "kill", "-s", "SIGKILL", task, timeout=30, check=False)
        for task in tasks:
            self("tasks", "delete", "-f", task, timeout=30, check=False)


def kubelet_config(node: str, pki: Path, containerd_socket: Path) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": node,
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
        "containerRuntimeEndpoint": f"unix://{containerd_socket}",
        # Nothing can be pulled again: never collect images.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "serializeImagePulls": False,
        "resolvConf": "/etc/resolv.conf",
        "volumeStatsAggPeriod": "10s",
    }


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
