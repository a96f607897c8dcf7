"""The host processes of the local e2e cluster (etcd, the control plane, containerd, the kubelet): each
started in a session of its own, its output in <logs>/<name>.log and its pid in <pids>/<name>.pid, so
that `down`, in another process or after a failure, finds and stops every one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.e2e.steps import log


class HostProcesses:
    def __init__(self, logs: Path, pids: Path) -> None:
        self.logs = logs
        self.pids = pids

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


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
