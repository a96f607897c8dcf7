"""Container images for the local e2e cluster, made without a registry or Docker.

Each image is written as a docker-save archive (manifest.json, a config JSON, one tar per layer)
that `ctr -n k8s.io images import` takes:
  - pause: a static C binary, the sandbox image of the cluster's containerd;
  - busybox: Debian's busybox-static, the image of the scenarios' test pods;
  - every kubernetes-csi sidecar the chart runs, tagged with the exact reference in values.yaml
    (binaries from tools/e2e/build);
  - the driver: Debian (debootstrap) + Python + image-packages.txt + this checkout, installed
    like the Dockerfile does (a venv at /opt/btrfs-csi). The Debian base with the package's
    dependencies is cached by the hash of what goes into it; only the package layer is remade.

Usage: python -m tests.e2e.images OUT_DIR   (prints one archive path per line)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from tests.e2e.release import DRIVER_IMAGE

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("E2E_CACHE", "/var/cache/btrfs-csi-e2e"))
VERSIONS = dict(
    line.split("=", 1)
    for line in (REPO / "tools/e2e/versions.env").read_text().splitlines()
    if line and not line.startswith("#")
)
DEBIAN_SUITE = "bookworm"  # its python3 is 3.11, the Dockerfile's base
DEBIAN_MIRROR = "http://deb.debian.org/debian"
PAUSE_IMAGE = "btrfs-csi-e2e/pause:1"
BUSYBOX_IMAGE = "btrfs-csi-e2e/busybox:1"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# values.yaml image key -> (binary directory in the build cache, binary name = entrypoint)
SIDECARS = {
    "csi-provisioner": ("external-provisioner", "csi-provisioner"),
    "csi-snapshotter": ("external-snapshotter", "csi-snapshotter"),
    "snapshot-controller": ("external-snapshotter", "snapshot-controller"),
    "csi-resizer": ("external-resizer", "csi-resizer"),
    "csi-node-driver-registrar": ("standins", "csi-node-driver-registrar"),
    "livenessprobe": ("standins", "livenessprobe"),
}

PAUSE_C = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    struct sigaction term = {.sa_handler = stop}, child = {.sa_handler = reap};
    sigaction(SIGINT, &term, NULL);
    sigaction(SIGTERM, &term, NULL);
    sigaction(SIGCHLD, &child, NULL);
    for (;;) pause();
}
"""


def log(message: str) -> None:
    print(f"[images] {message}", file=sys.stderr, flush=True)


def run(*args: str, **kwargs: object) -> None:
    log("$ " + " ".join(args))
    subprocess.run(args, check=True, **kwargs)  # type: ignore[call-overload]


@dataclass
class Image:
    reference: str
    layers: list[Path]
    entrypoint: list[str]
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: [f"PATH={SYSTEM_PATH}"])

    def write(self, archive: Path) -> Path:
        """The docker-save archive of this image at `archive`."""
        diff_ids = [f"sha256:{sha256_file(layer)}" for layer in self.layers]
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": self.entrypoint, "Cmd": self.cmd, "Env": self.env, "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
        config_bytes = json.dumps(config, sort_keys=True).encode()
        config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
        layer_names = [f"{d.removeprefix('sha256:')}/layer.tar" for d in diff_ids]
        manifest = [{"Config": config_name, "RepoTags": [self.reference], "Layers": layer_names}]
        tmp = archive.with_suffix(".tmp")
        with tarfile.open(tmp, "w") as tar:
            add_bytes(tar, config_name, config_bytes)
            for name, layer in zip(layer_names, self.layers, strict=True):
                tar.add(layer, name)
            add_bytes(tar, "manifest.json", json.dumps(manifest).encode())
        tmp.rename(archive)
        return archive


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def layer_from_dir(root: Path, layer: Path) -> Path:
    """A layer tar of everything under `root`, owned as on disk (numeric ids, no names)."""

    def numeric(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uname = info.gname = ""
        return info

    tmp = layer.with_suffix(".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(root.iterdir()):
            tar.add(entry, entry.name, filter=numeric)
    tmp.rename(layer)
    return layer


def single_binary_layer(binary: Path, layer: Path) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(binary, Path(tmp) / binary.name)
        return layer_from_dir(Path(tmp), layer)


def chart_images() -> dict[str, str]:
    """values.yaml image name (last path element) -> the full reference the chart uses."""
    values = yaml.safe_load((REPO / "charts/btrfs-csi/values.yaml").read_text())
    found: dict[str, str] = {}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("repository"), str) and node.get("tag"):
                found[node["repository"].rsplit("/", 1)[1]] = f"{node['repository']}:{node['tag']}"
            for child in node.values():
                walk(child)

    walk(values)
    return found


def sidecar_images(work: Path) -> list[Image]:
    images = []
    for name, reference in sorted(chart_images().items()):
        directory, binary = SIDECARS[name]
        version = "standins" if directory == "standins" else f"{directory}-{reference.rsplit(':', 1)[1]}"
        path = CACHE / version / binary
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run tools/e2e/build first")
        layer = single_binary_layer(path, work / f"{name}.tar")
        images.append(Image(reference, [layer], [f"/{binary}"]))
    return images


def pause_image(work: Path) -> Image:
    root = work / "pause-root"
    root.mkdir()
    source = work / "pause.c"
    source.write_text(PAUSE_C)
    run("gcc", "-static", "-Os", "-s", "-o", str(root / "pause"), str(source))
    return Image(PAUSE_IMAGE, [layer_from_dir(root, work / "pause.tar")], ["/pause"])


def busybox_image(work: Path) -> Image:
    download = work / "deb"
    download.mkdir()
    run("apt-get", "download", "busybox-static", cwd=download)
    (deb,) = download.glob("busybox-static_*.deb")
    unpacked = work / "busybox-deb"
    run("dpkg-deb", "-x", str(deb), str(unpacked))
    root = work / "busybox-root"
    (root / "bin").mkdir(parents=True)
    (root / "tmp").mkdir(mode=0o1777)
    shutil.copy2(unpacked / "bin/busybox", root / "bin/busybox")
    applets = subprocess.run(
        [str(root / "bin/busybox"), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    return Image(BUSYBOX_IMAGE, [layer_from_dir(root, work / "busybox.tar")], ["/bin/sh"], env=["PATH=/bin"])


def image_packages() -> list[str]:
    lines = (REPO / "image-packages.txt").read_text().splitlines()
    return [word for line in lines for word in line.split("#", 1)[0].split()]


def python_dependencies() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dependencies: list[str] = project["dependencies"]
    return dependencies


def chroot_env() -> dict[str, str]:
    return {
        "PATH": f"/opt/btrfs-csi/bin:{SYSTEM_PATH}",
        "HOME": "/root",
        "PIP_NO_CACHE_DIR": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_CERT": "/tmp/ca-certificates.crt",
        "PYTHONDONTWRITEBYTECODE": "1",
    }


def driver_base(work: Path) -> Path:
    """Debian + python3 + image-packages.txt + a venv with the package's dependencies, as a layer
    tar cached by the hash of those inputs (debootstrap and pip take minutes)."""
    packages = ["python3", "python3-venv", *image_packages()]
    dependencies = python_dependencies()
    key = hashlib.sha256(json.dumps([DEBIAN_SUITE, packages, dependencies]).encode()).hexdigest()[:16]
    cached = CACHE / f"driver-base-{key}"
    if (cached / "layer.tar").is_file():
        return cached
    shutil.rmtree(cached, ignore_errors=True)
    rootfs = cached / "rootfs"
    rootfs.mkdir(parents=True)
    run(
        "debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
        DEBIAN_SUITE, str(rootfs), DEBIAN_MIRROR,
    )  # fmt: skip
    with build_mounts(rootfs):
        run("chroot", str(rootfs), "python3", "-m", "venv", "/opt/btrfs-csi", env=chroot_env())
        run("chroot", str(rootfs), "pip", "install", "-q", *dependencies, env=chroot_env())
    for junk in ("var/lib/apt/lists", "var/cache/apt", "var/log"):
        shutil.rmtree(rootfs / junk, ignore_errors=True)
        (rootfs / junk).mkdir(parents=True)
    layer_from_dir(rootfs, cached / "layer.tar.part").rename(cached / "layer.tar")
    return cached


class build_mounts:
    """/proc, /dev, DNS and the CA bundle inside a chroot, for pip; removed afterwards."""

    def __init__(self, rootfs: Path) -> None:
        self.rootfs = rootfs
        self.mounted: list[Path] = []

    def __enter__(self) -> None:
        shutil.copy2("/etc/resolv.conf", self.rootfs / "etc/resolv.conf")
        shutil.copy2("/etc/ssl/certs/ca-certificates.crt", self.rootfs / "tmp/ca-certificates.crt")
        for source, args in (("/proc", ["-t", "proc", "proc"]), ("/dev", ["--bind", "/dev"])):
            target = self.rootfs / source.lstrip("/")
            run("mount", *args, str(target))
            self.mounted.append(target)

    def __exit__(self, *exc: object) -> None:
        for target in reversed(self.mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)
        (self.rootfs / "tmp/ca-certificates.crt").unlink(missing_ok=True)
        (self.rootfs / "etc/resolv.conf").unlink(missing_ok=True)


def docker_ignored() -> list[str]:
    """.dockerignore's patterns as names: the same build context as `docker build .`."""
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip().removeprefix("**/") for line in lines if line.strip() and not line.startswith("#")]


def driver_image(work: Path) -> Image:
    """The package from this checkout installed into the cached base's venv: an overlay on the base
    rootfs, `pip install --no-deps`, and the overlay's upper directory is the second layer."""
    base = driver_base(work)
    upper, overlay_work, merged = work / "upper", work / "overlay-work", work / "merged"
    for d in (upper, overlay_work, merged):
        d.mkdir()
    options = f"lowerdir={base / 'rootfs'},upperdir={upper},workdir={overlay_work}"
    run("mount", "-t", "overlay", "overlay", "-o", options, str(merged))
    try:
        source = merged / "tmp/src"
        shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*docker_ignored()))
        with build_mounts(merged):
            run("chroot", str(merged), "pip", "install", "-q", "--no-deps", "/tmp/src", env=chroot_env())
            run("chroot", str(merged), "btrfs-csi", "--help", env=chroot_env(), stdout=subprocess.DEVNULL)
        shutil.rmtree(source)
    finally:
        run("umount", str(merged))
    for leftover in ("tmp/src", "root/.cache"):
        shutil.rmtree(upper / leftover, ignore_errors=True)
    layers = [base / "layer.tar", layer_from_dir(upper, work / "driver-app.tar")]
    env = [f"PATH=/opt/btrfs-csi/bin:{SYSTEM_PATH}", "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"]
    return Image(DRIVER_IMAGE, layers, ["btrfs-csi"], ["--help"], env)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        work = Path(tmp)
        images = [pause_image(work), busybox_image(work), *sidecar_images(work), driver_image(work)]
        for image in images:
            name = image.reference.replace("/", "_").replace(":", "_")
            print(image.write(out / f"{name}.tar"), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
