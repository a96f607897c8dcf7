"""What the stress suites share: a driver served by a real `btrfs-csi serve` process (started, probed,
SIGKILLed, restarted), the switch between the bounded CI form and the full `make stress` form, the
counts each suite reports, and one consistency check of a pool against the btrfs CLI oracle.

The full form runs when the environment variable BTRFS_CSI_STRESS is set to 1 (`make stress`).
"""

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from btrfs_core import quota
from btrfs_core.backend import KernelBackend
from btrfs_core.errors import InUse, KernelError, NotFound
from btrfs_core.models import QuotaMode
from csi.pb import csi_pb2, csi_pb2_grpc
from tests.core.oracle import qgroup_show, settle, subvolume_list
from tests.csi.conftest import Client
from tests.csi.test_cli import REPO, command, environment, serve_args
from tests.support import eventually

STRESS_ENV = "BTRFS_CSI_STRESS"
SEED_ENV = "BTRFS_CSI_STRESS_SEED"
FULL = os.environ.get(STRESS_ENV, "") not in ("", "0")
# What the sidecars retry with the same request: the driver was down, busy, or slow.
RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
    }
)
RPC_TIMEOUT = 20.0
# Counts and seeds reported at the end of the run (tests/stress/conftest.py prints them).
COUNTS: dict[str, int] = {}
SEEDS: dict[str, int] = {}


def scaled(ci: int, full: int) -> int:
    """The CI size of a run, or the full one under BTRFS_CSI_STRESS=1."""
    return full if FULL else ci


def count(key: str, n: int = 1) -> None:
    COUNTS[key] = COUNTS.get(key, 0) + n


def seeded(label: str) -> random.Random:
    """A random generator whose seed is printed (and taken from BTRFS_CSI_STRESS_SEED when set)."""
    seed = int(os.environ.get(SEED_ENV) or random.SystemRandom().randrange(1 << 32))
    print(f"{label}: seed {seed} (rerun with {SEED_ENV}={seed})")
    SEEDS[label] = seed
    return random.Random(seed)


KILL_PATIENCE = 120.0  # seconds a SIGKILLed driver may take to die (see ServedDriver.kill)


def kernel_stacks(pid: int) -> str:
    """Each thread's state and kernel stack (/proc/PID/task/TID/stack, root only): where it waits."""
    parts = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            state = next(
                line for line in (task / "status").read_text().splitlines() if line.startswith("State:")
            )
            parts.append(f"{task.name} {state}\n{(task / 'stack').read_text()}")
        except OSError as exc:
            parts.append(f"{task.name}: {exc}")
    return "\n".join(parts)


@dataclass
class ServedDriver:
    """`btrfs-csi serve` on a pool, in a process of its own; stdout and stderr go to one log file.

    The log is a file, not a pipe: a pipe nobody drains would block the driver once it is full.
    """

    pool: Path
    extra: tuple[str, ...] = ()
    log_format: str = "json"
    log_level: str = "INFO"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="csi-stress-")))
    socket_path: Path | None = None  # <workdir>/csi.sock unless given
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    _channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.socket_path or self.workdir / "csi.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "driver.log"

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None, "the driver is running already"
        args = serve_args(
            self.socket, self.pool, "--log-format", self.log_format, "--log-level", self.log_level
        )
        with open(self.log_path, "ab") as log:
            self.started_at = time.monotonic()
            self.process = subprocess.Popen(
                [*command(), *args, *self.extra],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=environment(),
            )
        self.starts += 1

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Waits until Probe answers ready; returns the seconds since the process was started."""
        try:
            eventually(self._ready, "the driver ready", timeout, interval=0.005)
        except AssertionError as exc:
            raise AssertionError(f"{exc}:\n{self.log_tail()}") from None
        return time.monotonic() - self.started_at

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the driver exited with {self.process.returncode}")
        if not self.socket.exists():
            return False
        with grpc.insecure_channel(f"unix://{self.socket}") as channel:
            try:
                return csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=2).ready.value
            except grpc.RpcError as exc:
                if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise
                return False

    def client(self) -> Client:
        """A client on a channel of its own, closed when the driver is killed or stopped."""
        channel = grpc.insecure_channel(f"unix://{self.socket}")
        self._channels.append(channel)
        return Client(
            csi_pb2_grpc.IdentityStub(channel),
            csi_pb2_grpc.ControllerStub(channel),
            csi_pb2_grpc.NodeStub(channel),
        )

    def _close_channels(self) -> None:
        for channel in self._channels:
            channel.close()
        self._channels.clear()

    def kill(self) -> int:
        """SIGKILL, then waits for the process; returns its exit status (-9 unless it had exited).

        A thread killed inside an uninterruptible kernel wait (a transaction commit: WAIT_SYNC, a
        snapshot's commit) dies only when that wait ends, which on a loop device over a busy host disk
        took more than 30 s once in CI; the kernel itself calls a task hung after 120 s."""
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGKILL)
        try:
            status = self.process.wait(timeout=KILL_PATIENCE)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the driver outlived SIGKILL by {KILL_PATIENCE:.0f} s; its threads in the kernel:\n"
                + kernel_stacks(self.process.pid)
            ) from None
        self._close_channels()
        return status

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and a graceful stop (SIGKILL if it does not come); returns the exit status."""
        self._close_channels()
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()
        self._close_channels()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ServedDriver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def served(pool: Path, *extra: str, **options: Any) -> Iterator[ServedDriver]:
    """A started, ready driver on the pool; killed and cleaned up afterwards whatever happens."""
    with ServedDriver(pool, tuple(extra), **options) as driver:
        driver.start()
        driver.wait_ready()
        yield driver


def _every_page(
    call: Callable[..., Any], request_type: Callable[..., Any], item: Callable[[Any], Any], page: int
) -> dict[str, Any]:
    """Every item of a List call by id, paging with max_entries `page` (0: one call); none twice."""
    found: dict[str, Any] = {}
    token = ""
    while True:
        response = call(request_type(max_entries=page, starting_token=token), timeout=RPC_TIMEOUT)
        for entry in response.entries:
            listed = item(entry)
            key = listed.volume_id if isinstance(listed, csi_pb2.Volume) else listed.snapshot_id
            assert key not in found, f"{key} listed twice"
            found[key] = listed
        token = response.next_token
        if not token:
            return found


def list_volumes(client: Client, page: int = 0) -> dict[str, csi_pb2.Volume]:
    """Every volume by id, through ListVolumes pages of `page` entries."""
    return _every_page(client.controller.ListVolumes, csi_pb2.ListVolumesRequest, lambda e: e.volume, page)


def list_snapshots(client: Client, page: int = 0) -> dict[str, csi_pb2.Snapshot]:
    """Every snapshot by id, through ListSnapshots pages of `page` entries."""
    return _every_page(
        client.controller.ListSnapshots, csi_pb2.ListSnapshotsRequest, lambda e: e.snapshot, page
    )


def source_of(volume: csi_pb2.Volume) -> tuple[str, str] | None:
    """A volume's content source as ("snapshot" | "volume", id), or None."""
    if not volume.HasField("content_source"):
        return None
    source = volume.content_source
    if source.HasField("snapshot"):
        return "snapshot", source.snapshot.snapshot_id
    return "volume", source.volume.volume_id


def subvolume_sync(mount: Path, timeout: float = 60.0) -> None:
    """Waits for the cleaner to drop every deleted subvolume: commits until no orphan is left (each
    commit wakes the cleaner, which otherwise sleeps up to the commit interval), then confirms it with
    `btrfs subvolume sync`. A deleted subvolume still mounted somewhere is not dropped until unmounted.
    """
    settle(mount, timeout)
    try:
        subprocess.run(
            ["btrfs", "subvolume", "sync", str(mount)], check=True, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"deleted subvolumes of {mount} not dropped in {timeout} s") from None


@dataclass
class PoolState:
    """What the driver lists, checked against the disk; the caller compares it with its own model."""

    volumes: dict[str, csi_pb2.Volume]
    snapshots: dict[str, csi_pb2.Snapshot]
    stale_qgroups: dict[int, int]  # qgroups left by deleted subvolumes: id -> bytes still charged


def check_consistent(client: Client, mount: Path, page: int = 7) -> PoolState:
    """ListVolumes and ListSnapshots equal the pool's directories and `btrfs subvolume list`; no staging
    debris; every volume's qgroup limit is its capacity; no stale qgroups that hold nothing.

    Stale level-0 qgroups: full qgroups keep none (kernel 6.11+ drops them with the subvolume); under
    simple quotas a deleted subvolume's qgroup stays while other subvolumes share the extents charged to
    it, so such a qgroup must still carry a charge. Empty ones are removed (as the reconciler would) and
    must go.
    """
    volumes = list_volumes(client, page)
    snapshots = list_snapshots(client, page)
    assert sorted(os.listdir(mount / "volumes")) == sorted(volumes)
    assert sorted(os.listdir(mount / "snapshots")) == sorted(snapshots)
    assert os.listdir(mount / ".staging") == [], "staging debris"
    subvolume_sync(mount)
    subvolumes = subvolume_list(mount)
    expected = {f"volumes/{vid}" for vid in volumes} | {f"snapshots/{sid}" for sid in snapshots}
    assert {entry.path for entry in subvolumes.values()} == expected
    qgroups = qgroup_show(mount)
    groups = qgroup_show(mount, 1)
    for vid, volume in volumes.items():
        meta = json.loads(os.getxattr(mount / "volumes" / vid, KernelBackend.metadata_xattr))
        assert groups[meta["qgroup"]].max_referenced == volume.capacity_bytes, vid
    status = quota.status(mount)
    if status.inconsistent and status.mode is QuotaMode.FULL:
        # The cleaner dropping a deleted subvolume removes its qgroup from the volume's level-1 one, and
        # that can mark full accounting inconsistent after every call has answered (6.18 warns in
        # __qgroup_excl_accounting): what the reconciler's rescan is for. Run it as the reconciler does.
        with contextlib.suppress(KernelError):  # EINPROGRESS: one runs already
            quota.rescan(mount)
        quota.wait_rescan(mount)
        status = quota.status(mount)
    assert not status.inconsistent
    stale = {qid: q.referenced for qid, q in qgroups.items() if qid >= 256 and qid not in subvolumes}
    if stale and status.mode.value == "full":
        raise AssertionError(f"stale qgroups under full qgroups: {stale}")
    empty = [qid for qid, referenced in stale.items() if referenced == 0]
    for qgroupid in empty:  # as the reconciler removes them: one the kernel keeps (EBUSY) is left
        with contextlib.suppress(InUse, NotFound):
            quota.destroy_qgroup(mount, qgroupid)
    if empty:
        left = {qid for qid in empty if qid in qgroup_show(mount)}
        assert not left, f"empty stale qgroups the kernel would not let go: {left}"
    count("stale qgroups removed (empty, simple quotas)", len(empty))
    return PoolState(volumes, snapshots, {qid: r for qid, r in stale.items() if r})


def retry_until_ok(
    call: Callable[[], Any],
    attempts: int = 400,
    pause: float = 0.02,
    on_retry: Callable[[], None] = lambda: None,
) -> Any:
    """Calls until OK as a sidecar would, retrying what the sidecars retry; other codes are raised."""
    for _ in range(attempts):
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() not in RETRYABLE:
                raise
        except ValueError:  # the channel was closed under the call: the driver was killed
            pass
        on_retry()
        time.sleep(pause)
    raise AssertionError(f"no OK after {attempts} attempts")
