"""The two drivers the benches compare, each served in a process of its own on a unix socket: `btrfs-csi
serve` as the chart runs it, and the reference that tools/csi-driver-host-path builds."""

import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.bench_scale import populate
from csi.pb import csi_pb2, csi_pb2_grpc
from tests.conftest import free_port
from tests.stress.harness import ServedDriver
from tests.support import loop_pool

BUILD_REFERENCE = Path(__file__).resolve().parents[1] / "tools" / "csi-driver-host-path"


@dataclass
class Endpoint:
    """A driver on a unix socket, and the directory holding a directory per volume, where the data of a
    volume id lands (to fill it before snapshots)."""

    label: str
    socket: Path
    root: Path  # the mount point of the driver's btrfs
    volumes: Path
    pid: int

    def data_dir(self, volume_id: str) -> Path:
        return self.volumes / volume_id

    def volume_count(self) -> int:
        return sum(1 for entry in os.scandir(self.volumes) if entry.is_dir())

    @contextmanager
    def stubs(self) -> Iterator[tuple[csi_pb2_grpc.IdentityStub, csi_pb2_grpc.ControllerStub]]:
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            yield csi_pb2_grpc.IdentityStub(channel), csi_pb2_grpc.ControllerStub(channel)


def wait_ready(label: str, socket: Path, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"bench: {label} exited with {process.returncode}")
        if socket.exists():
            with grpc.insecure_channel(f"unix://{socket}") as channel:
                try:
                    csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=2)
                    return
                except grpc.RpcError:
                    pass
        time.sleep(0.01)
    raise SystemExit(f"bench: {label} was not ready within {timeout} s")


@contextmanager
def spawned(
    label: str,
    argv: Callable[[Path], list[str]],
    mount: Path,
    volumes: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[Endpoint]:
    """A driver process started with `argv(socket)`, its log beside its socket in a directory of its own;
    killed and removed afterwards."""
    with ExitStack() as cleanup:
        workdir = Path(tempfile.mkdtemp(prefix="csi-bench-"))
        cleanup.callback(os.rmdir, workdir)
        socket = workdir / "csi.sock"
        cleanup.callback(socket.unlink, missing_ok=True)
        log = cleanup.enter_context(open(workdir / "driver.log", "wb"))
        cleanup.callback((workdir / "driver.log").unlink)
        process = subprocess.Popen(argv(socket), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        cleanup.callback(process.wait, 30)
        cleanup.callback(process.kill)
        wait_ready(label, socket, process)
        yield Endpoint(label, socket, mount, volumes, process.pid)


@contextmanager
def reference(size: int) -> Iterator[Endpoint]:
    """The reference driver, its state directory on a btrfs of its own; stopped and removed afterwards."""
    built = subprocess.run([str(BUILD_REFERENCE)], stdout=subprocess.PIPE, text=True, timeout=1800)
    if built.returncode != 0:
        raise SystemExit(f"bench: {BUILD_REFERENCE} failed ({built.returncode}): no reference to compare")
    binary = Path(built.stdout.strip())
    label = "csi-driver-host-path" if binary.name == "hostpathplugin" else "hostpath-standin"
    with loop_pool(size=size, prefix="btrfs-csi-bench-ref-") as mount:
        state = mount / "state"

        def argv(socket: Path) -> list[str]:
            endpoint = f"unix://{socket}"
            return [str(binary), "--endpoint", endpoint, "--nodeid", "bench", "--statedir", str(state)]

        with spawned(label, argv, mount, state) as endpoint:
            yield endpoint


@contextmanager
def ours(size: int, existing: int = 0, snapshots: bool = False) -> Iterator[Endpoint]:
    """`btrfs-csi serve` as the chart runs it (INFO log, metrics exporter on) on a fresh pool, which holds
    `existing` 1 MiB volumes (and a snapshot of each if `snapshots`) made through the core."""
    with loop_pool(size=size, prefix="btrfs-csi-bench-ours-") as mount:
        populate(mount, existing, snapshots=snapshots)
        metrics = ("--metrics-address", f"127.0.0.1:{free_port()}")
        with ServedDriver(mount, metrics) as driver:
            driver.start()
            driver.wait_ready()
            assert driver.process is not None
            yield Endpoint("btrfs-csi", driver.socket, mount, mount / "volumes", driver.process.pid)
            assert driver.stop() == 0, driver.log_tail()
