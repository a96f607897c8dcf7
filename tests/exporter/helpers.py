"""Helpers for the exporter tests: the kernel's own view of qgroups, and scrapes parsed to samples."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from btrfs_core.models import PV_NAME_KEY, PVC_NAME_KEY, PVC_NAMESPACE_KEY
from btrfs_exporter.exposition import render

Labels = frozenset[tuple[str, str]]


def pvc(namespace: str, name: str) -> dict[str, str]:
    """Volume metadata as csi-provisioner --extra-create-metadata passes it."""
    return {PVC_NAMESPACE_KEY: namespace, PVC_NAME_KEY: name, PV_NAME_KEY: f"pv-{name}"}


def kernel_qgroups(mount: Path) -> dict[int, tuple[int, int, int | None]]:
    """`btrfs qgroup show --raw -re`: qgroupid (a subvolume id at level 0) -> (referenced, exclusive,
    max referenced)."""
    out = subprocess.run(
        ["btrfs", "qgroup", "show", "--raw", "-re", str(mount)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    found: dict[int, tuple[int, int, int | None]] = {}
    for line in out.splitlines():
        fields = line.split()
        if not fields or "/" not in fields[0] or not fields[1].isdigit():
            continue
        level, qgroup = fields[0].split("/")
        max_rfer = None if fields[3] == "none" else int(fields[3])
        found[int(level) << 48 | int(qgroup)] = (int(fields[1]), int(fields[2]), max_rfer)
    return found


def btrfs(*args: str) -> str:
    return subprocess.run(["btrfs", *args], check=True, capture_output=True, text=True, timeout=60).stdout


def write_file(path: Path, size: int) -> None:
    """`size` bytes of incompressible data, on disk before returning."""
    with open(path, "wb") as f:
        remaining = size
        while remaining:
            chunk = min(remaining, 1 << 20)
            f.write(os.urandom(chunk))
            remaining -= chunk
        f.flush()
        os.fsync(f.fileno())


def exposition(registry: CollectorRegistry, library: bool = False) -> str:
    """The text /metrics serves (the exporter's renderer), or prometheus_client's own rendering."""
    return (generate_latest(registry) if library else render(registry)).decode()


def samples(registry: CollectorRegistry, library: bool = False) -> dict[str, dict[Labels, float]]:
    """One scrape: sample name -> {label set: value}."""
    found: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(exposition(registry, library)):
        for sample in family.samples:
            found.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
    return found


def labels(**pairs: str) -> Labels:
    return frozenset(pairs.items())


def require(binary: str, package: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"needs {binary} (Debian package {package}; `make test` installs it: tools/system-deps)")
    return path
