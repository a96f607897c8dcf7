"""One e2e suite, two cluster providers: kind where Docker and kind are there (kind_cluster.py),
else the local single-node cluster built from source (local_cluster.py).
`python -m tests.e2e.providers` prints the one this machine gets."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

from tests.e2e import kind_cluster as kind
from tests.e2e import local_cluster as local


class Provider(Protocol):
    provider: str
    pod_image: str

    @property
    def kubeconfig(self) -> Path: ...

    def api(self) -> Any: ...
    def version(self) -> str: ...
    def worker_names(self) -> list[str]: ...
    def pool_path(self, node: str) -> Path: ...
    def kubelet_get(self, node: str, path: str) -> str: ...
    def helm(self, action: str, values: dict[str, Any] | None = None) -> Any: ...
    def chart_values(self) -> dict[str, Any]: ...
    def diagnostics(self) -> str: ...


def local_missing() -> list[str]:
    """What this machine lacks for the local provider, in words a person can act on."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root")
    for tool in ("containerd", "runc", "ctr", "mkfs.btrfs", "losetup", "iptables", "nsenter", "openssl"):
        if shutil.which(tool) is None:
            missing.append(f"{tool} on PATH (tools/e2e/deps installs the Debian packages)")
    if not (local.CACHE / f"kubernetes-{local.KUBERNETES_VERSION}" / "kubelet").exists():
        missing.append(f"Kubernetes {local.KUBERNETES_VERSION} binaries (tools/e2e/build)")
    if not any(local.images_dir().glob("*.tar")):
        missing.append(f"image archives in {local.images_dir()} (python -m tests.e2e.images)")
    return missing


def choose() -> tuple[str, list[str]]:
    """(provider name, what it lacks on this machine)."""
    if not kind.missing_prerequisites():
        return "kind", []
    return "local", local_missing()


def bring_up(name: str, keep: bool) -> AbstractContextManager[Provider]:
    """The cluster for one run of the suite; BTRFS_CSI_E2E_REUSE=1 runs it on the local cluster
    `make e2e-up` left running, and leaves that cluster alone afterwards."""
    if name == "local" and os.environ.get("BTRFS_CSI_E2E_REUSE") == "1":
        return contextlib.nullcontext(local.LocalCluster())
    made: AbstractContextManager[Any] = (
        kind.e2e_cluster(keep) if name == "kind" else local.local_cluster(keep)
    )
    return made


def main() -> int:
    name, missing = choose()
    print(name)
    if missing:
        print(f"{name} provider lacks: " + "; ".join(missing), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
