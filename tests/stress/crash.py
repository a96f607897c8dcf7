"""The crash workload: sidecar-like workers drive a served driver while the main thread SIGKILLs it at
random moments (seeded) and restarts it. Every call a kill interrupts is retried as the sidecars do, with
the same request, until OK. A model records what each OK promised; at the end the pool must hold exactly
that: the volumes and snapshots, their capacities, sources and qgroup limits, and the bytes written and
fsync'd through NodePublishVolume bind mounts into the volumes (and carried into snapshots, clones and
restores).

Workers never run two calls on one name at once (a sidecar serialises per object), but they run
different names concurrently, so a kill lands in the middle of several operations at a time.
"""

import functools
import hashlib
import os
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from btrfs_core.backend import KernelBackend
from btrfs_core.pool import Pool
from csi.pb import csi_pb2
from tests.core.oracle import hash_tree
from tests.csi.conftest import Client, mount_capability
from tests.stress.harness import (
    RPC_TIMEOUT,
    ServedDriver,
    check_consistent,
    retry_until_ok,
    source_of,
)

MiB = 1 << 20
# Names hashed to IDs (not safe as directory names) are in the mix on purpose.
VOLUME_NAMES = [f"vol-{i}" for i in range(14)] + ["pvc ünï/0", "pvc ünï/1"]
SNAPSHOT_NAMES = [f"snap-{i}" for i in range(10)] + ["snap ünï/0"]
CAPACITIES = (2 * MiB, 4 * MiB, 8 * MiB, 16 * MiB)
MAX_FILES = 6  # per volume; later writes replace earlier files
MAX_PUBLISHED = 6
STARTUP_KILL_SHARE = 0.12  # kills that land while the driver starts (opening the pool, clearing staging)
KILL_DELAY = (0.01, 0.35)  # seconds after the driver is ready


@dataclass
class VolumeModel:
    name: str
    id: str
    capacity: int
    source: tuple[str, str] | None
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256 of what was fsync'd
    target: Path | None = None  # where it is published


@dataclass
class SnapshotModel:
    name: str
    id: str
    source_volume_id: str
    size: int
    files: dict[str, str]


@dataclass
class Plan:
    kind: str
    keys: frozenset[str]  # names reserved while it runs
    run: Callable[[], None]


class GateShut(Exception):
    """The run is over (or failed): nobody waits for the driver any more."""


class Gate:
    """The client of the driver that is up now; none while it is down (callers wait)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._client: Client | None = None
        self._shut = False

    def open(self, client: Client) -> None:
        with self._cond:
            self._client = client
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._client = None

    def shut(self) -> None:
        with self._cond:
            self._shut = True
            self._cond.notify_all()

    def client(self, timeout: float = 90.0) -> Client:
        with self._cond:
            if not self._cond.wait_for(lambda: self._client is not None or self._shut, timeout):
                raise AssertionError(f"the driver was not up for {timeout} s")
            if self._client is None:
                raise GateShut()
            return self._client


class Model:
    """What the OK answers promised; guarded by one lock, with names reserved by running operations."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.volumes: dict[str, VolumeModel] = {}
        self.snapshots: dict[str, SnapshotModel] = {}
        self.busy: set[str] = set()


def write_file(directory: Path, name: str, data: bytes) -> None:
    """Replaces directory/name with data atomically and durably (write, fsync, rename, fsync dir)."""
    temporary = directory / f".{name}.tmp"
    with open(temporary, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(temporary, directory / name)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Worker(threading.Thread):
    def __init__(self, index: int, seed: int, model: Model, gate: Gate, sandbox: Path, stop: threading.Event):
        super().__init__(name=f"crash-worker-{index}", daemon=True)
        self.rng = random.Random(seed)
        self.model, self.gate, self.sandbox, self.stop_event = model, gate, sandbox, stop
        self.ops: Counter[str] = Counter()
        self.calls = 0
        self.retried_calls = 0
        self.error: BaseException | None = None
        self._targets = 0

    # calls

    def rpc(self, method: Callable[[Client], Callable[..., Any]], request: Any) -> Any:
        """One call retried until OK, the request unchanged, across kills and restarts."""
        interrupted = False

        def retried() -> None:
            nonlocal interrupted
            interrupted = True

        def attempt() -> Any:
            return method(self.gate.client())(request, timeout=RPC_TIMEOUT)

        response = retry_until_ok(attempt, on_retry=retried)
        self.calls += 1
        self.retried_calls += interrupted
        return response

    def create(self, name: str, capacity: int, source: tuple[str, str] | None) -> str:
        request = csi_pb2.CreateVolumeRequest(
            name=name,
            capacity_range=csi_pb2.CapacityRange(required_bytes=capacity),
            volume_capabilities=[mount_capability()],
        )
        if source is not None and source[0] == "snapshot":
            request.volume_content_source.snapshot.snapshot_id = source[1]
        elif source is not None:
            request.volume_content_source.volume.volume_id = source[1]
        volume = self.rpc(lambda c: c.controller.CreateVolume, request).volume
        assert volume.capacity_bytes == capacity and source_of(volume) == source, (name, volume)
        return str(volume.volume_id)

    def unpublish(self, volume: VolumeModel) -> None:
        assert volume.target is not None
        request = csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume.id, target_path=str(volume.target))
        self.rpc(lambda c: c.node.NodeUnpublishVolume, request)
        assert not volume.target.exists()
        volume.target = None

    # operations: each runs with its names reserved, and records what its OK answers promised

    def plan(self) -> Plan | None:
        m, rng = self.model, self.rng
        free_volumes = [n for n in VOLUME_NAMES if n not in m.volumes and "v:" + n not in m.busy]
        free_snapshots = [n for n in SNAPSHOT_NAMES if n not in m.snapshots and "s:" + n not in m.busy]
        volumes = [v for v in m.volumes.values() if "v:" + v.name not in m.busy]
        snapshots = [s for s in m.snapshots.values() if "s:" + s.name not in m.busy]
        published = [v for v in volumes if v.target is not None]
        unpublished = [v for v in volumes if v.target is None]
        count_published = sum(v.target is not None for v in m.volumes.values())
        options: list[tuple[float, Callable[[], Plan]]] = []
        if free_volumes:
            options.append((3, lambda: self.plan_create(rng.choice(free_volumes), None)))
            if snapshots:
                options.append((2, lambda: self.plan_create(rng.choice(free_volumes), rng.choice(snapshots))))
            if volumes:
                options.append((2, lambda: self.plan_create(rng.choice(free_volumes), rng.choice(volumes))))
        if free_snapshots and volumes:
            options.append((3, lambda: self.plan_snapshot(rng.choice(free_snapshots), rng.choice(volumes))))
        if volumes:
            options.append((2, lambda: self.plan_delete_volume(rng.choice(volumes))))
            options.append((1, lambda: self.plan_repeat_create(rng.choice(volumes))))
        if snapshots:
            options.append((2, lambda: self.plan_delete_snapshot(rng.choice(snapshots))))
        if unpublished and count_published < MAX_PUBLISHED:
            options.append((1.5, lambda: self.plan_publish(rng.choice(unpublished))))
        if published:
            options.append((4, lambda: self.plan_write(rng.choice(published))))
            options.append((0.5, lambda: self.plan_unpublish(rng.choice(published))))
        if not options:
            return None
        weights = [weight for weight, _ in options]
        return rng.choices([make for _, make in options], weights)[0]()

    def plan_create(self, name: str, source: VolumeModel | SnapshotModel | None) -> Plan:
        keys = {"v:" + name}
        if isinstance(source, VolumeModel):
            keys.add("v:" + source.name)
            kind, minimum, spec = "clone", source.capacity, ("volume", source.id)
        elif isinstance(source, SnapshotModel):
            keys.add("s:" + source.name)
            kind, minimum, spec = "restore", source.size, ("snapshot", source.id)
        else:
            kind, minimum, spec = "create", 0, None
        capacity = max(minimum, self.rng.choice(CAPACITIES))
        files = dict(source.files) if source is not None else {}

        def run() -> None:
            volume_id = self.create(name, capacity, spec)
            with self.model.lock:
                self.model.volumes[name] = VolumeModel(name, volume_id, capacity, spec, files)

        return Plan(kind, frozenset(keys), run)

    def plan_repeat_create(self, volume: VolumeModel) -> Plan:
        def run() -> None:
            assert self.create(volume.name, volume.capacity, volume.source) == volume.id

        return Plan("repeat create", frozenset({"v:" + volume.name}), run)

    def plan_snapshot(self, name: str, volume: VolumeModel) -> Plan:
        def run() -> None:
            request = csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=volume.id)
            snapshot = self.rpc(lambda c: c.controller.CreateSnapshot, request).snapshot
            assert snapshot.source_volume_id == volume.id and snapshot.ready_to_use
            made = SnapshotModel(name, snapshot.snapshot_id, volume.id, volume.capacity, dict(volume.files))
            with self.model.lock:
                self.model.snapshots[name] = made

        return Plan("snapshot", frozenset({"s:" + name, "v:" + volume.name}), run)

    def plan_delete_volume(self, volume: VolumeModel) -> Plan:
        def run() -> None:
            if volume.target is not None:
                self.unpublish(volume)
            self.rpc(lambda c: c.controller.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=volume.id))
            with self.model.lock:
                del self.model.volumes[volume.name]

        return Plan("delete volume", frozenset({"v:" + volume.name}), run)

    def plan_delete_snapshot(self, snapshot: SnapshotModel) -> Plan:
        def run() -> None:
            request = csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.id)
            self.rpc(lambda c: c.controller.DeleteSnapshot, request)
            with self.model.lock:
                del self.model.snapshots[snapshot.name]

        return Plan("delete snapshot", frozenset({"s:" + snapshot.name}), run)

    def plan_publish(self, volume: VolumeModel) -> Plan:
        self._targets += 1
        target = self.sandbox / f"{self.name[-1]}-{self._targets}"

        def run() -> None:
            request = csi_pb2.NodePublishVolumeRequest(
                volume_id=volume.id, target_path=str(target), volume_capability=mount_capability()
            )
            self.rpc(lambda c: c.node.NodePublishVolume, request)
            assert os.path.ismount(target)
            volume.target = target

        return Plan("publish", frozenset({"v:" + volume.name}), run)

    def plan_unpublish(self, volume: VolumeModel) -> Plan:
        return Plan("unpublish", frozenset({"v:" + volume.name}), lambda: self.unpublish(volume))

    def plan_write(self, volume: VolumeModel) -> Plan:
        name = f"f-{self.rng.randrange(MAX_FILES)}"
        data = self.rng.randbytes(self.rng.randrange(1, 48 << 10))

        def run() -> None:
            assert volume.target is not None
            write_file(volume.target, name, data)
            volume.files[name] = hashlib.sha256(data).hexdigest()

        return Plan("write+fsync", frozenset({"v:" + volume.name}), run)

    # the loop

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                with self.model.lock:
                    plan = self.plan()
                    if plan is not None:
                        self.model.busy |= plan.keys
                if plan is None:
                    time.sleep(0.005)
                    continue
                try:
                    plan.run()
                    self.ops[plan.kind] += 1
                finally:
                    with self.model.lock:
                        self.model.busy -= plan.keys
        except BaseException as exc:
            self.error = exc
            self.stop_event.set()


@dataclass
class CrashReport:
    kills: int = 0
    startup_kills: int = 0
    calls: int = 0
    retried_calls: int = 0
    ops: Counter[str] = field(default_factory=Counter)
    volumes: int = 0
    snapshots: int = 0
    files: int = 0
    stale_qgroups: int = 0


def run_crash_workload(
    mount: Path, kills: int, rng: random.Random, workers: int = 4, extra: tuple[str, ...] = ()
) -> CrashReport:
    """Runs the workload through `kills` SIGKILLs of the driver, then checks the pool against the model."""
    report = CrashReport()
    model, gate, stop = Model(), Gate(), threading.Event()
    with ServedDriver(mount, extra) as driver:
        sandbox = driver.workdir / "targets"
        sandbox.mkdir()
        crew = [Worker(i, rng.randrange(1 << 32), model, gate, sandbox, stop) for i in range(workers)]
        for worker in crew:
            worker.start()
        try:
            for _ in range(kills):
                if stop.is_set():
                    break
                driver.start()
                if rng.random() < STARTUP_KILL_SHARE:
                    time.sleep(rng.uniform(0.0, 0.4))
                    report.startup_kills += 1
                else:
                    driver.wait_ready()
                    assert os.listdir(mount / ".staging") == [], "staging debris after start-up"
                    gate.open(driver.client())
                    time.sleep(rng.uniform(*KILL_DELAY))
                    gate.close()
                status = driver.kill()
                assert status == -signal.SIGKILL, (
                    f"the driver exited by itself ({status}):\n{driver.log_tail()}"
                )
                report.kills += 1
            driver.start()
            driver.wait_ready()
            assert os.listdir(mount / ".staging") == [], "staging debris after start-up"
            gate.open(driver.client())
            stop.set()
            for worker in crew:
                worker.join(timeout=120)
            for worker in crew:
                if worker.error is not None:
                    raise AssertionError(f"{worker.name} failed: {worker.error!r}") from worker.error
                assert not worker.is_alive(), f"{worker.name} did not finish"
            verify(model, driver.client(), mount, report)
            assert driver.stop() == 0, driver.log_tail()
            assert "Traceback" not in driver.log_text(), driver.log_text()
        finally:
            stop.set()
            gate.shut()
            for worker in crew:
                worker.join(timeout=60)
            for target in sandbox.iterdir():  # bind mounts a failed run left behind
                if os.path.ismount(target):
                    subprocess.run(["umount", "--lazy", str(target)], check=False, timeout=60)
    for worker in crew:
        report.calls += worker.calls
        report.retried_calls += worker.retried_calls
        report.ops.update(worker.ops)
    return report


def verify(model: Model, client: Client, mount: Path, report: CrashReport) -> None:
    """The pool holds what the model says, read through the driver, the directories and the CLI."""
    for volume in model.volumes.values():
        if volume.target is not None:
            assert hash_tree(volume.target) == volume.files, f"data of {volume.name} through its target"
            request = csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume.id, target_path=str(volume.target))
            retry_until_ok(functools.partial(client.node.NodeUnpublishVolume, request, timeout=RPC_TIMEOUT))
    state = check_consistent(client, mount)
    assert {vid: (v.capacity_bytes, source_of(v)) for vid, v in state.volumes.items()} == {
        v.id: (v.capacity, v.source) for v in model.volumes.values()
    }
    assert {sid: (s.source_volume_id, s.size_bytes) for sid, s in state.snapshots.items()} == {
        s.id: (s.source_volume_id, s.size) for s in model.snapshots.values()
    }
    # One object per name: the names kept on the subvolumes are those of the model, once each.
    reader = Pool(mount, KernelBackend(mount))
    assert sorted(v.name for v in reader.list_volumes()) == sorted(model.volumes)
    assert sorted(s.name for s in reader.list_snapshots()) == sorted(model.snapshots)
    for volume in model.volumes.values():
        assert hash_tree(mount / "volumes" / volume.id) == volume.files, f"data of volume {volume.name}"
    for snapshot in model.snapshots.values():
        assert hash_tree(mount / "snapshots" / snapshot.id) == snapshot.files, (
            f"data of snapshot {snapshot.name}"
        )
    report.volumes, report.snapshots = len(model.volumes), len(model.snapshots)
    report.files = sum(len(v.files) for v in model.volumes.values()) + sum(
        len(s.files) for s in model.snapshots.values()
    )
    report.stale_qgroups = len(state.stale_qgroups)
