"""The ends of a cross-node transfer nobody planned, between two `btrfs-csi serve` processes on two loop
pools: a restore whose provisioner gave up stays out of sight and is removed (after idle_seconds, by
a delete, or by a restart), a DeleteVolume mid-restore cancels it and answers OK only once nothing of
it remains, and a source deleted on the sending node mid-send has a defined outcome."""

import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from btrfs_core.pool import Pool
from csi.pb import csi_pb2
from tests.core.tree_fingerprint import MiB
from tests.peer.test_peer_restore import (
    Node,
    _digest,
    big_snapshot,
    create_request,
    create_until_ok,
    delete_volumes,
    from_snapshot,
    from_volume,
    local_receiver,
    nodes,
    start_restore,
    wait_for,
)
from tests.stress.harness import retry_until_ok

pytestmark = pytest.mark.kernel
__all__ = ["big_snapshot", "nodes"]  # fixtures, shared with test_peer_restore's (a set of their own)


def logged(node: Node, message: str, volume_id: str) -> bool:
    """Whether node's driver logged `message` for volume_id (its log is JSON, a line per record)."""
    for line in node.driver.log_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == message and entry.get("volume_id") == volume_id:
            return True
    return False


def listed(node: Node) -> set[str]:
    entries = node.client().controller.ListVolumes(csi_pb2.ListVolumesRequest(), timeout=30).entries
    return {entry.volume.volume_id for entry in entries}


def abandoned_restore(b: Node, request: csi_pb2.CreateVolumeRequest) -> None:
    """A CreateVolume the provisioner gives up on at once (the claim was deleted): its transfer goes on,
    nobody asks again. Returns once the transfer is done."""
    with pytest.raises(grpc.RpcError) as gave_up:
        b.client().controller.CreateVolume(request, timeout=0.5)
    assert gave_up.value.code() in (grpc.StatusCode.ABORTED, grpc.StatusCode.DEADLINE_EXCEEDED)
    wait_for(lambda: logged(b, "transfer done", request.name), "the abandoned transfer done")


@pytest.fixture(scope="module")
def small_snapshot(nodes: dict[str, Node]) -> str:
    client = nodes["node-a"].client()
    volume = client.create_volume("small", 64 * MiB)
    (nodes["node-a"].pool / "volumes" / volume.volume_id / "data").write_bytes(os.urandom(MiB))
    return client.create_snapshot("small-snap", volume.volume_id).snapshot_id


@pytest.mark.parametrize("end", ["restart", "delete"])
def test_a_restore_nobody_claims_never_becomes_a_volume(
    nodes: dict[str, Node], small_snapshot: str, end: str
) -> None:
    """Done, unclaimed: out of sight (not in volumes/, not listed) with its capacity reserved; a restart
    of the receiver, or a DeleteVolume of its ID, removes it; a CreateVolume afterwards starts afresh."""
    b = nodes["node-b"]
    name = f"unclaimed-{end}"
    request = create_request(name, 64 * MiB, from_snapshot(small_snapshot))
    abandoned_restore(b, request)
    assert not (b.pool / "volumes" / name).exists()
    assert name not in listed(b)
    assert b.staging() != []  # held there, whole, for a claim
    if end == "restart":
        b.driver.kill()
        b.restart()
    else:
        b.client().controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name), timeout=30)
    assert b.staging() == []
    assert not (b.pool / "volumes" / name).exists() and name not in listed(b)
    restored = create_until_ok(b, request)
    assert (b.pool / "volumes" / restored.volume_id / "data").stat().st_size == MiB
    delete_volumes(b, restored.volume_id)


def test_a_restore_nobody_claims_is_removed_after_idle_seconds(
    nodes: dict[str, Node], small_snapshot: str, btrfs_mount: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Done, and nobody asks for it within idle_seconds: removed, its capacity released; it was never
    visible."""
    request = create_request("unclaimed-idle", 64 * MiB, from_snapshot(small_snapshot))
    with local_receiver(nodes, btrfs_mount, idle_seconds=3.0) as (pool, controller):
        available = pool.available_capacity()
        with caplog.at_level(logging.INFO, logger="csi.peer"):
            with pytest.raises(grpc.RpcError):
                controller.CreateVolume(request, timeout=0.5)
            wait_for(lambda: any(r.getMessage() == "transfer done" for r in caplog.records), "transfer done")
            assert pool.list_volume_ids() == [] and pool.available_capacity() < available
            wait_for(
                lambda: (
                    any(r.getMessage() == "transfer cancelled" for r in caplog.records)
                    and os.listdir(pool.staging_dir) == []
                    and pool.available_capacity() == available
                ),
                "the unclaimed volume removed, its capacity released",
            )
        assert pool.list_volume_ids() == []


def test_a_transfer_a_call_waits_for_is_not_idle(
    nodes: dict[str, Node], big_snapshot: str, btrfs_mount: Path
) -> None:
    """idle_seconds shorter than a CreateVolume's wait: the transfer is not cancelled under the call
    waiting for it (the call answers ABORTED to retry and join it, not the transfer's cancellation)."""
    a = nodes["node-a"]
    request = create_request("waited-for", 340 * MiB, from_snapshot(big_snapshot))
    assert a.driver.process is not None
    with local_receiver(nodes, btrfs_mount, idle_seconds=1.0) as (pool, controller):
        while not os.listdir(pool.staging_dir):
            with pytest.raises(grpc.RpcError):
                controller.CreateVolume(request, timeout=1.2)  # waits 0.2 s, then ABORTED
        a.driver.process.send_signal(signal.SIGSTOP)  # the transfer cannot end by itself
        try:
            with pytest.raises(grpc.RpcError) as waited:
                controller.CreateVolume(request, timeout=4)  # waits 3 s: three times idle_seconds
            assert waited.value.code() is grpc.StatusCode.ABORTED
            assert "retry to join it" in (waited.value.details() or ""), waited.value.details()
            wait_for(lambda: os.listdir(pool.staging_dir) == [], "the transfer cancelled once idle")
        finally:
            a.driver.process.send_signal(signal.SIGCONT)


def test_a_delete_mid_restore_cancels_it_and_answers_ok_once_nothing_is_left(
    nodes: dict[str, Node], big_snapshot: str
) -> None:
    a, b = nodes["node-a"], nodes["node-b"]
    name = "deleted-mid-restore"
    controller = b.client().controller
    request = create_request(name, 340 * MiB, from_snapshot(big_snapshot))
    start_restore(controller, request, b.pool / ".staging")
    assert a.driver.process is not None
    a.driver.process.send_signal(signal.SIGSTOP)  # the sender stalls: the transfer cannot end by itself
    try:
        assert not (b.pool / "volumes" / name).exists(), "the restore was done before the delete"
        retry_until_ok(
            lambda: controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name), timeout=30),
            attempts=3000,
            pause=0.05,
        )
    finally:
        a.driver.process.send_signal(signal.SIGCONT)
    # OK: nothing of the volume is left, and the transfer has let go: nothing of it lands later.
    assert b.staging() == []
    assert not (b.pool / "volumes" / name).exists() and name not in listed(b)
    assert logged(b, "transfer cancelled by a delete", name)
    # Idempotent.
    controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=name), timeout=30)


def sending(a: Node, b: Node, request: csi_pb2.CreateVolumeRequest, stopped: Callable[[], None]) -> None:
    """Starts the restore on b, and stops b once node-a's send is under way (node-a's send then waits on
    the stream, mid-send); `stopped` runs then, and b goes on afterwards."""
    sent = a.metric("btrfs_csi_peer_transfer_bytes_total")
    start_restore(b.client().controller, request, b.pool / ".staging")
    wait_for(lambda: a.metric("btrfs_csi_peer_transfer_bytes_total") > sent, "node-a sending")
    assert b.driver.process is not None
    b.driver.process.send_signal(signal.SIGSTOP)
    try:
        assert not logged(b, "transfer done", request.name), "the transfer was done before it was stopped"
        stopped()
    finally:
        b.driver.process.send_signal(signal.SIGCONT)


def test_a_snapshot_being_sent_is_not_deleted_until_the_send_ends(
    nodes: dict[str, Node], big_snapshot: str
) -> None:
    """DeleteSnapshot mid-send: FAILED_PRECONDITION (the kernel refuses to delete a subvolume being sent)
    and the snapshot stays whole; the restore completes; the delete, retried, succeeds."""
    a, b = nodes["node-a"], nodes["node-b"]
    client_a = a.client()
    snapshot = client_a.create_snapshot("sent-while-deleted", Pool.volume_id("big")).snapshot_id
    request = create_request("from-deleted-snapshot", 340 * MiB, from_snapshot(snapshot))
    refused: list[grpc.RpcError] = []

    def delete_snapshot() -> None:
        with pytest.raises(grpc.RpcError) as caught:
            client_a.controller.DeleteSnapshot(
                csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot), timeout=30
            )
        refused.append(caught.value)

    sending(a, b, request, delete_snapshot)
    assert refused[0].code() is grpc.StatusCode.FAILED_PRECONDITION, refused[0].details()
    assert "being sent" in (refused[0].details() or "")
    restored = create_until_ok(b, request)
    data = b.pool / "volumes" / restored.volume_id / "data.bin"
    assert _digest(data) == _digest(a.pool / "snapshots" / snapshot / "data.bin")
    client_a.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot), timeout=30)
    assert not (a.pool / "snapshots" / snapshot).exists()
    assert a.staging() == [] and b.staging() == []
    delete_volumes(b, restored.volume_id)


def test_a_volume_deleted_mid_send_is_deleted_and_its_clone_is_whole(
    nodes: dict[str, Node], big_snapshot: str
) -> None:
    """DeleteVolume of the source mid-send: OK at once (the send reads its temporary snapshot, not the
    volume), the clone completes with the volume's data as it was, and the temporary snapshot goes."""
    a, b = nodes["node-a"], nodes["node-b"]
    client_a = a.client()
    source = client_a.controller.CreateVolume(
        create_request("cloned-while-deleted", 340 * MiB, from_snapshot(big_snapshot)), timeout=30
    ).volume.volume_id
    expected = _digest(a.pool / "volumes" / source / "data.bin")
    request = create_request("clone-of-deleted", 340 * MiB, from_volume(source))

    def delete_source() -> None:
        assert a.staging() != []  # the temporary snapshot being sent
        client_a.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=source), timeout=30)

    sending(a, b, request, delete_source)
    assert not (a.pool / "volumes" / source).exists()
    clone = create_until_ok(b, request)
    assert _digest(b.pool / "volumes" / clone.volume_id / "data.bin") == expected
    wait_for(lambda: a.staging() == [] and b.staging() == [], "no temporary snapshot or staging left")
    delete_volumes(b, clone.volume_id)
