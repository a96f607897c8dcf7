"""Races through the real socket: identical calls at the same instant (a barrier), a storm of 32 clients
creating, snapshotting and deleting the same and different IDs, and creates racing for the last free
space of a nearly full pool. Afterwards the pool is consistent with the CLI oracle (harness.check_consistent).
"""

import os
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from csi.pb import csi_pb2
from tests.csi.conftest import Client, MiB, mount_capability
from tests.stress.harness import (
    RPC_TIMEOUT,
    ServedDriver,
    check_consistent,
    count,
    list_volumes,
    scaled,
    seeded,
    served,
)

pytestmark = pytest.mark.kernel

OK, ABORTED = grpc.StatusCode.OK, grpc.StatusCode.ABORTED
NOT_FOUND, EXHAUSTED = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS
CLIENTS = 32


def outcome(call: Callable[[], Any]) -> tuple[grpc.StatusCode, Any]:
    try:
        return OK, call()
    except grpc.RpcError as exc:
        return exc.code(), exc.details()


Method = Callable[[Client], Callable[..., Any]]


def create_volume(client: Client) -> Callable[..., Any]:
    return client.controller.CreateVolume


def at_once(clients: list[Client], method: Method, requests: list[Any]) -> list[tuple[grpc.StatusCode, Any]]:
    """requests[i] through method(clients[i]), one thread per client, released together by a barrier."""
    barrier = threading.Barrier(len(clients))

    def run(i: int) -> tuple[grpc.StatusCode, Any]:
        barrier.wait(timeout=60)
        return outcome(lambda: method(clients[i])(requests[i], timeout=60))

    with ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(run, range(len(clients))))


def create_request(
    name: str, capacity: int, source: csi_pb2.VolumeContentSource | None = None, exact: bool = False
) -> Any:
    request = csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=capacity, limit_bytes=capacity if exact else 0),
        volume_capabilities=[mount_capability()],
    )
    if source is not None:
        request.volume_content_source.CopyFrom(source)
    return request


def snapshot_source(snapshot_id: str) -> csi_pb2.VolumeContentSource:
    return csi_pb2.VolumeContentSource(
        snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id)
    )


def volume_source(volume_id: str) -> csi_pb2.VolumeContentSource:
    return csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=volume_id))


@pytest.fixture
def driver(btrfs_mount: Path) -> Iterator[ServedDriver]:
    with served(btrfs_mount) as running:
        yield running


@pytest.fixture
def clients(driver: ServedDriver) -> list[Client]:
    """32 clients, each on a connection of its own."""
    return [driver.client() for _ in range(CLIENTS)]


def test_identical_creates_make_one_volume_and_answer_ok_or_aborted(
    driver: ServedDriver, clients: list[Client], btrfs_mount: Path
) -> None:
    rng = seeded("races/identical")
    rounds = scaled(6, 40)
    for r in range(rounds):
        name, capacity = f"race-{r}", rng.choice((MiB, 2 * MiB, 4 * MiB))  # 40 rounds fit in 1 GiB
        results = at_once(clients, create_volume, [create_request(name, capacity)] * CLIENTS)
        codes = Counter(code for code, _ in results)
        assert set(codes) <= {OK, ABORTED}, results
        made = {(v.volume.volume_id, v.volume.capacity_bytes) for code, v in results if code is OK}
        assert made == {(name, capacity)}, made
        # Identical snapshots, restores and clones of it, then identical deletes.
        snapshot = csi_pb2.CreateSnapshotRequest(name=f"snap-{r}", source_volume_id=name)
        results = at_once(clients, lambda c: c.controller.CreateSnapshot, [snapshot] * CLIENTS)
        assert {code for code, _ in results} <= {OK, ABORTED}, results
        assert {s.snapshot.snapshot_id for code, s in results if code is OK} == {f"snap-{r}"}
        for kind, source in (("restore", snapshot_source(f"snap-{r}")), ("clone", volume_source(name))):
            request = create_request(f"{kind}-{r}", capacity, source)
            results = at_once(clients, create_volume, [request] * CLIENTS)
            assert {code for code, _ in results} <= {OK, ABORTED}, results
            assert {v.volume.volume_id for code, v in results if code is OK} == {f"{kind}-{r}"}
        count("identical concurrent calls", 4 * CLIENTS)
    state = check_consistent(clients[0], btrfs_mount)
    assert len(state.volumes) == 3 * rounds and len(state.snapshots) == rounds
    for r in range(rounds):
        delete = csi_pb2.DeleteVolumeRequest(volume_id=f"race-{r}")
        results = at_once(clients, lambda c: c.controller.DeleteVolume, [delete] * CLIENTS)
        assert {code for code, _ in results} <= {OK, ABORTED}, results
        count("identical concurrent calls", CLIENTS)
    state = check_consistent(clients[0], btrfs_mount)
    assert len(state.volumes) == 2 * rounds and len(state.snapshots) == rounds


def test_identical_names_with_different_capacities_make_one_volume(
    clients: list[Client], btrfs_mount: Path
) -> None:
    for r in range(scaled(4, 20)):
        name = f"split-{r}"
        requests = [create_request(name, (1 + i % 2) * 4 * MiB, exact=True) for i in range(CLIENTS)]
        results = at_once(clients, create_volume, requests)
        assert {code for code, _ in results} <= {OK, ABORTED, ALREADY_EXISTS}, results
        winners = {v.volume.capacity_bytes for code, v in results if code is OK}
        assert len(winners) == 1, winners
        capacity = winners.pop()
        # Whoever asked for the other capacity was refused; nobody asking for the winner's was.
        for i, (code, _) in enumerate(results):
            asked = (1 + i % 2) * 4 * MiB
            assert code in ((OK, ABORTED) if asked == capacity else (ALREADY_EXISTS, ABORTED)), (i, code)
        count("identical concurrent calls", CLIENTS)
    check_consistent(clients[0], btrfs_mount)


# the storm

VOLUMES = {f"v{i}": (i + 1) * 2 * MiB for i in range(6)}
CLONES = {f"c{i}": ("v0", 16 * MiB) for i in range(3)}
RESTORES = {f"r{i}": ("s0", 16 * MiB) for i in range(3)}
SNAPSHOTS = {f"s{i}": f"v{i % 3}" for i in range(6)}


def storm_call(client: Client, rng: random.Random) -> tuple[str, grpc.StatusCode, set[grpc.StatusCode]]:
    """One random call on a small set of names; returns its kind, its code and the codes it may give."""
    c = client.controller
    kind = rng.choice(
        ["create", "clone", "restore", "delete", "snapshot", "delete snapshot", "get", "list", "capacity"]
    )
    call: Callable[[], Any]
    allowed = {OK, ABORTED}
    if kind == "create":
        name = rng.choice(sorted(VOLUMES))
        call = lambda: c.CreateVolume(create_request(name, VOLUMES[name]), timeout=RPC_TIMEOUT)  # noqa: E731
    elif kind in ("clone", "restore"):
        name = rng.choice(sorted(CLONES if kind == "clone" else RESTORES))
        source_id, capacity = (CLONES if kind == "clone" else RESTORES)[name]
        source = volume_source(source_id) if kind == "clone" else snapshot_source(source_id)
        call = lambda: c.CreateVolume(create_request(name, capacity, source), timeout=RPC_TIMEOUT)  # noqa: E731
        allowed.add(NOT_FOUND)  # the source is gone
    elif kind == "delete":
        volume_id = rng.choice(sorted([*VOLUMES, *CLONES, *RESTORES]))
        call = lambda: c.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume_id), timeout=RPC_TIMEOUT)  # noqa: E731
    elif kind == "snapshot":
        name = rng.choice(sorted(SNAPSHOTS))
        request = csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=SNAPSHOTS[name])
        call = lambda: c.CreateSnapshot(request, timeout=RPC_TIMEOUT)  # noqa: E731
        allowed.add(NOT_FOUND)
    elif kind == "delete snapshot":
        snapshot_id = rng.choice(sorted(SNAPSHOTS))
        delete = csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id)
        call = lambda: c.DeleteSnapshot(delete, timeout=RPC_TIMEOUT)  # noqa: E731
    elif kind == "get":
        volume_id = rng.choice(sorted(VOLUMES))
        get = csi_pb2.ControllerGetVolumeRequest(volume_id=volume_id)
        call = lambda: c.ControllerGetVolume(get, timeout=RPC_TIMEOUT)  # noqa: E731
        allowed = {OK, NOT_FOUND}
    elif kind == "list":
        call = lambda: list_volumes(client, page=rng.choice((0, 2, 5)))  # noqa: E731
        allowed = {OK, ABORTED}  # a page token whose volume was deleted meanwhile is still good: OK
    else:
        call = lambda: c.GetCapacity(csi_pb2.GetCapacityRequest(), timeout=RPC_TIMEOUT)  # noqa: E731
        allowed = {OK}
    code, details = outcome(call)
    assert code in allowed, (kind, code, details)
    return kind, code, allowed


def test_storm_of_32_clients_on_the_same_and_different_ids(clients: list[Client], btrfs_mount: Path) -> None:
    rng = seeded("races/storm")
    calls_per_client = scaled(40, 400)
    seeds = [rng.randrange(1 << 32) for _ in clients]
    barrier = threading.Barrier(len(clients))

    def client_loop(i: int) -> Counter[tuple[str, grpc.StatusCode]]:
        local = random.Random(seeds[i])
        seen: Counter[tuple[str, grpc.StatusCode]] = Counter()
        barrier.wait(timeout=60)
        for _ in range(calls_per_client):
            kind, code, _ = storm_call(clients[i], local)
            seen[kind, code] += 1
        return seen

    with ThreadPoolExecutor(len(clients)) as pool:
        totals = sum(pool.map(client_loop, range(len(clients))), Counter())
    count("storm calls (32 clients)", sum(totals.values()))
    count(
        "  of them ABORTED by a concurrent call on the same ID",
        sum(n for (_, c), n in totals.items() if c is ABORTED),
    )
    assert sum(n for (kind, c), n in totals.items() if c is OK and kind != "list") > 0
    state = check_consistent(clients[0], btrfs_mount)
    specs = {
        **VOLUMES,
        **{n: cap for n, (_, cap) in CLONES.items()},
        **{n: cap for n, (_, cap) in RESTORES.items()},
    }
    for volume_id, volume in state.volumes.items():
        assert volume.capacity_bytes == specs[volume_id]
    for snapshot_id, snapshot in state.snapshots.items():
        assert snapshot.source_volume_id == SNAPSHOTS[snapshot_id]


# the last free space


def race_for_the_rest(clients: list[Client], mount: Path, overprovision: float, rounds: int) -> None:
    """Fills the pool to a little under its limit, then lets 32 creates race for what is left."""
    controller = clients[0].controller
    available = controller.GetCapacity(csi_pb2.GetCapacityRequest(), timeout=RPC_TIMEOUT).available_capacity
    filler = 0
    while available > 96 * MiB:  # one volume can take at most the free space: several under overprovision
        size = min(available, 900 * MiB) - 64 * MiB
        size -= size % MiB
        controller.CreateVolume(create_request(f"filler-{filler}", size), timeout=RPC_TIMEOUT)
        filler += 1
        available = controller.GetCapacity(
            csi_pb2.GetCapacityRequest(), timeout=RPC_TIMEOUT
        ).available_capacity
    st = os.statvfs(mount)
    limit = int(st.f_blocks * st.f_frsize * overprovision)
    for r in range(rounds):
        left = controller.GetCapacity(csi_pb2.GetCapacityRequest(), timeout=RPC_TIMEOUT).available_capacity
        size = max(MiB, (left // (3 + r % 5)) // MiB * MiB + MiB)  # a few fit, most do not
        results = at_once(
            clients, create_volume, [create_request(f"last-{r}-{i}", size) for i in range(CLIENTS)]
        )
        codes = Counter(code for code, _ in results)
        assert set(codes) <= {OK, EXHAUSTED}, results
        assert codes[OK] >= 1 and codes[EXHAUSTED] >= 1, codes
        assert codes[OK] * size <= left, (codes, size, left)
        volumes = list_volumes(clients[0])
        assert sum(v.capacity_bytes for v in volumes.values()) <= limit
        count("creates racing for the last space", CLIENTS)
        count("  of them RESOURCE_EXHAUSTED", codes[EXHAUSTED])
        for code, response in results:
            if code is OK:
                controller.DeleteVolume(
                    csi_pb2.DeleteVolumeRequest(volume_id=response.volume.volume_id), timeout=RPC_TIMEOUT
                )
    check_consistent(clients[0], mount)


def test_creates_racing_for_the_last_space_never_overcommit(clients: list[Client], btrfs_mount: Path) -> None:
    race_for_the_rest(clients, btrfs_mount, 1.0, scaled(3, 15))


def test_creates_racing_under_overprovision_never_exceed_it(btrfs_mount: Path) -> None:
    with served(btrfs_mount, "--overprovision", "2") as driver:
        race_for_the_rest([driver.client() for _ in range(CLIENTS)], btrfs_mount, 2.0, scaled(3, 10))


def test_a_second_driver_on_the_same_pool_is_refused(driver: ServedDriver, btrfs_mount: Path) -> None:
    """Opening the pool clears staging: a second server would delete what the first is building."""
    with ServedDriver(btrfs_mount) as second:
        second.start()
        assert second.process is not None
        assert second.process.wait(timeout=30) == 2
        assert "served by another process" in second.log_text(), second.log_text()
    assert driver.process is not None and driver.process.poll() is None
    client = driver.client()
    client.create_volume("still-mine")
