"""What the local e2e cluster changes on the host, and how `down` puts it back: the sysctls the kubelet
sets, the iptables chains it makes, the mounts and pod cgroups left behind, and the processes (pods,
containerd shims) that outlive the cluster's own."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.steps import log, run

# The kubelet sets these at start (protectKernelDefaults off); down restores them.
KUBELET_SYSCTLS = [
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
]  # fmt: skip
CGROUP_ROOT = Path("/sys/fs/cgroup")


def save_sysctls(work: Path) -> None:
    saved = {key: (Path("/proc/sys") / key).read_text().strip() for key in KUBELET_SYSCTLS}
    (work / "sysctls.json").write_text(json.dumps(saved))


def restore_sysctls(work: Path) -> None:
    path = work / "sysctls.json"
    if path.exists():
        for key, value in json.loads(path.read_text()).items():
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / key).write_text(value)
        path.unlink()


def save_iptables_chains(work: Path) -> None:
    """The chains there before the kubelet, which remove_kubelet_chains leaves alone."""
    (work / "iptables-chains.json").write_text(json.dumps(iptables_chains()))


def remove_kubelet_chains(work: Path) -> None:
    """The KUBE-* chains the kubelet made (its canaries and KUBE-FIREWALL, which drops
    non-loopback traffic to 127/8) and the rules jumping to them; not what was there before."""
    path = work / "iptables-chains.json"
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


def unmount_all(roots: tuple[Path, ...]) -> None:
    """Every mount under `roots` and the pods' network namespaces, newest first."""

    def ours(target: str) -> bool:
        under = any(target == str(r) or target.startswith(f"{r}/") for r in roots)
        return under or target.startswith(("/run/netns/cni-", "/var/run/netns/cni-"))

    for target in reversed(mount_targets()):
        if ours(target) and run("umount", target, check=False).returncode != 0:
            run("umount", "-l", target, check=False)
    for netns in Path("/run/netns").glob("cni-*"):
        netns.unlink(missing_ok=True)


def is_mountpoint(path: Path) -> bool:
    return str(path) in mount_targets()


def mount_targets() -> list[str]:
    """Mount points in mount order (octal escapes decoded)."""
    targets = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4]
        targets.append(target.encode().decode("unicode_escape"))
    return targets


def kill_leftover_shims(containerd_socket: Path) -> None:
    """The containerd shims of this cluster's containerd (by its socket) still running."""
    needle = str(containerd_socket).encode()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if b"containerd-shim" in cmdline and needle in cmdline:
                    os.kill(int(proc.name), signal.SIGKILL)


def kill_cgroup_processes() -> None:
    for cgroup in pod_cgroups():
        with contextlib.suppress(OSError):
            for pid in (cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)


def remove_cgroups() -> None:
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


def pod_cgroups() -> list[Path]:
    """Every cgroup directory the kubelet and runc made (kubepods* under each hierarchy)."""
    found: list[Path] = []
    for hierarchy in CGROUP_ROOT.iterdir():
        for top in hierarchy.glob("kubepods*"):
            if top.is_dir():
                found.extend(p for p in top.rglob("*") if p.is_dir())
                found.append(top)
    return found
