"""Offline rendering of charts/btrfs-csi with the Helm engine embedded in helm-python-sdk.

`helm_python` binds libhelm_c (Helm's Go SDK behind a C ABI) shipped inside the wheel: no helm
binary, no cluster and no network are involved. Rendering validates values against
values.schema.json, exactly as `helm install` does.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "btrfs-csi"
RELEASE = "btrfs-csi"
NAMESPACE = "btrfs-csi"

Obj = dict[str, Any]
Values = dict[str, Any]

# Every option the chart documents, each rendered, linted and validated on its own.
OPTIONS: dict[str, Values] = {
    "default": {},
    "loopfile-pool": {"pool": {"mode": "loopfile", "loopfile": {"size": "20G"}}},
    "metrics-servicemonitor": {
        "metrics": {
            "service": {"enabled": True},
            "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        }
    },
    "dashboard": {"dashboard": {"enabled": True}},
    "snapshot-controller": {"snapshotController": {"enabled": True}},
    # A cluster without pod network or kube-proxy (the local e2e cluster on loopback).
    "host-network": {
        "hostNetwork": True,
        "apiServer": {"host": "127.0.0.1", "port": 6443},
        "snapshotController": {"enabled": True},
    },
    # Snapshots that travel: the peer service, with Helm-generated certificates or a user's Secret.
    "peers": {"peers": {"enabled": True, "nodes": ["node-a", "node-b"]}},
    "peers-secret": {
        "peers": {
            "enabled": True,
            "nodes": ["node-a"],
            "tls": {"mode": "secret", "secretName": "my-peer-tls"},
        }
    },
    "custom-driver-name": {
        "driverName": "fast.btrfs.example.com",
        "storageClass": {"name": "btrfs-fast", "allowedNodes": ["node-a", "node-b"]},
        "volumeSnapshotClass": {"name": "btrfs-fast"},
    },
    "minimal": {
        "resizer": {"enabled": False},
        "storageClass": {"create": False},
        "volumeSnapshotClass": {"create": False},
        "metrics": {"enabled": False},
    },
    "everything": {
        "driverName": "fast.btrfs.example.com",
        "kubeletDir": "/var/lib/k0s/kubelet",
        "pool": {"mode": "loopfile", "path": "/srv/btrfs-pool"},
        "quotaMode": "simple",
        "overprovision": 2.5,
        "cpu": 3,
        "logFormat": "text",
        "logLevel": "debug",
        "commonLabels": {"team": "storage"},
        "storageClass": {
            "isDefault": True,
            "mountOptions": ["noatime"],
            "parameters": {"compression": "zstd:3"},
        },
        "volumeAttributesClasses": [
            {"name": "btrfs-zstd", "parameters": {"compression": "zstd"}},
            {"name": "btrfs-plain"},
        ],
        "volumeSnapshotClass": {"isDefault": True, "deletionPolicy": "Retain"},
        "metrics": {"service": {"enabled": True}, "serviceMonitor": {"enabled": True}},
        "dashboard": {"enabled": True},
        "snapshotController": {"enabled": True, "replicas": 2},
        "resizer": {"replicas": 2, "extraArgs": ["--workers=20"]},
    },
}


@functools.cache
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


def render_files(values: Values | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce (schema-checked)."""
    return _chart().render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE, is_install=True)


def split_documents(text: str) -> Iterator[Obj]:
    for doc in yaml.safe_load_all(text):
        if doc:
            if not isinstance(doc, dict):
                raise TypeError(f"rendered document is not a mapping: {doc!r}")
            yield doc


@functools.lru_cache(maxsize=32)
def _render_cached(option: str) -> tuple[Obj, ...]:
    files = render_files(OPTIONS[option])
    objs: list[Obj] = []
    for path in sorted(files):
        if path.endswith(".yaml"):
            objs.extend(split_documents(files[path]))
    return tuple(objs)


def render(option: str) -> list[Obj]:
    """The objects of one documented option set (deep copies: tests may mutate them)."""
    return copy.deepcopy(list(_render_cached(option)))


def render_values(values: Values) -> list[Obj]:
    files = render_files(values)
    return [obj for path in sorted(files) if path.endswith(".yaml") for obj in split_documents(files[path])]


def find(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    matches = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(objs: list[Obj]) -> list[str]:
    return sorted(o["kind"] for o in objs)


def containers(workload: Obj) -> dict[str, Obj]:
    spec = workload["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec["containers"]}


def init_containers(workload: Obj) -> dict[str, Obj]:
    spec = workload["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", [])}


def volumes(workload: Obj) -> dict[str, Obj]:
    return {v["name"]: v for v in workload["spec"]["template"]["spec"].get("volumes", [])}


def mounts(container: Obj) -> dict[str, Obj]:
    """Volume name -> volumeMount of a container."""
    return {m["name"]: m for m in container.get("volumeMounts", [])}


def flag(container: Obj, name: str) -> str | None:
    """Value of --name=value in args (\"\" for a bare --name), None when absent."""
    for arg in container.get("args", []):
        if arg == f"--{name}":
            return ""
        if arg.startswith(f"--{name}="):
            return str(arg.split("=", 1)[1])
    return None


def env(container: Obj) -> dict[str, Mapping[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}
