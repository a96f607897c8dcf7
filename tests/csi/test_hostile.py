"""Hostile input: IDs and names with '..', '/', NUL, 10 KiB strings, absurd capacities, targets inside the
pool. Each is refused with the spec's code and touches nothing: the pool's directory tree is unchanged.
Runs on the fake pool (no root) and on a real btrfs (kernel); the property tests keep to a few seconds."""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from btrfs_core.pool import MIN_VOLUME_BYTES
from csi.pb import csi_pb2
from tests.csi.conftest import Client, MiB, code_of, mount_capability, tree

INVALID, NOT_FOUND, OK = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OK
HOSTILE_IDS = [
    "..",
    ".",
    "../volumes",
    "../../etc/passwd",
    "/etc",
    "a/b",
    "volumes/../..",
    "a\0b",
    "\0",
    "x" * 10240,
    " ",
    "-rf",
    ".staging",
    "\n",
    "é",
]
SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
ANY_TEXT = st.one_of(
    st.sampled_from(HOSTILE_IDS),
    st.text(st.characters(codec="utf-8"), max_size=200),
    st.text(st.sampled_from("./\0a-_ "), max_size=20),
    st.text(max_size=1).map(lambda c: c * 10240),
)
PROPERTY = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def id_calls(client: Client, bad: str, target: Path) -> list[tuple[str, Callable[..., Any], Any]]:
    """Every RPC that takes a volume or snapshot ID, with `bad` in that place."""
    cap = mount_capability()
    c, n = client.controller, client.node
    return [
        ("DeleteVolume", c.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id=bad)),
        ("ControllerGetVolume", c.ControllerGetVolume, csi_pb2.ControllerGetVolumeRequest(volume_id=bad)),
        (
            "ValidateVolumeCapabilities",
            c.ValidateVolumeCapabilities,
            csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id=bad, volume_capabilities=[cap]),
        ),
        ("CreateSnapshot", c.CreateSnapshot, csi_pb2.CreateSnapshotRequest(name="s", source_volume_id=bad)),
        ("DeleteSnapshot", c.DeleteSnapshot, csi_pb2.DeleteSnapshotRequest(snapshot_id=bad)),
        ("GetSnapshot", c.GetSnapshot, csi_pb2.GetSnapshotRequest(snapshot_id=bad)),
        ("ListSnapshots(snapshot)", c.ListSnapshots, csi_pb2.ListSnapshotsRequest(snapshot_id=bad)),
        ("ListSnapshots(source)", c.ListSnapshots, csi_pb2.ListSnapshotsRequest(source_volume_id=bad)),
        (
            "CreateVolume(snapshot)",
            c.CreateVolume,
            csi_pb2.CreateVolumeRequest(
                name="v",
                volume_capabilities=[cap],
                volume_content_source=csi_pb2.VolumeContentSource(
                    snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=bad)
                ),
            ),
        ),
        (
            "CreateVolume(volume)",
            c.CreateVolume,
            csi_pb2.CreateVolumeRequest(
                name="v",
                volume_capabilities=[cap],
                volume_content_source=csi_pb2.VolumeContentSource(
                    volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=bad)
                ),
            ),
        ),
        (
            "NodePublishVolume",
            n.NodePublishVolume,
            csi_pb2.NodePublishVolumeRequest(volume_id=bad, target_path=str(target), volume_capability=cap),
        ),
        (
            "NodeUnpublishVolume",
            n.NodeUnpublishVolume,
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=bad, target_path=str(target)),
        ),
        (
            "NodeGetVolumeStats",
            n.NodeGetVolumeStats,
            csi_pb2.NodeGetVolumeStatsRequest(volume_id=bad, volume_path=str(target)),
        ),
        (
            "NodeExpandVolume",
            n.NodeExpandVolume,
            csi_pb2.NodeExpandVolumeRequest(
                volume_id=bad,
                volume_path=str(target),
                capacity_range=csi_pb2.CapacityRange(required_bytes=MiB),
            ),
        ),
    ]


@pytest.fixture
def populated(csi: Client) -> Client:
    """A pool with a volume and a snapshot, so a traversal would have something to reach."""
    volume = csi.create_volume("victim", 4 * MiB)
    csi.create_snapshot("victim-snap", volume.volume_id)
    return csi


@pytest.mark.parametrize("bad", HOSTILE_IDS, ids=lambda s: repr(s[:12]))
def test_hostile_ids_are_refused_everywhere_and_touch_nothing(
    populated: Client, bad: str, tmp_path: Path
) -> None:
    root = populated.pool.root
    before = tree(root)
    target = tmp_path / "target"
    for name, call, request in id_calls(populated, bad, target):
        assert code_of(call, request) == INVALID, name
    assert tree(root) == before
    assert not target.exists()


@pytest.mark.parametrize(
    "name", ["../../etc", "a/b", "..", ".", "/", "volumes/victim", ".staging/x", "-", "é" * 10]
)
def test_names_with_path_characters_become_safe_ids(populated: Client, name: str) -> None:
    root = populated.pool.root
    before = tree(root)
    volume = populated.create_volume(name, 2 * MiB)
    assert SAFE_ID.fullmatch(volume.volume_id)
    assert (root / "volumes" / volume.volume_id).is_dir()
    added = set(tree(root)) - set(before)
    assert {path.split("/")[:2] == ["volumes", volume.volume_id] for path in added} == {True}
    populated.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))
    assert tree(root) == before


@pytest.mark.parametrize("name", ["\0", "a\0", "x" * 10240, "é" * 65, "\x1b[31m", ""])
def test_unusable_names_are_invalid_and_touch_nothing(populated: Client, name: str) -> None:
    before = tree(populated.pool.root)
    request = csi_pb2.CreateVolumeRequest(name=name, volume_capabilities=[mount_capability()])
    assert code_of(populated.controller.CreateVolume, request) == INVALID
    snapshot = csi_pb2.CreateSnapshotRequest(name=name, source_volume_id="victim")
    assert code_of(populated.controller.CreateSnapshot, snapshot) == INVALID
    assert tree(populated.pool.root) == before


@pytest.mark.parametrize(
    ("required", "limit", "code"),
    [
        (-1, 0, grpc.StatusCode.OUT_OF_RANGE),
        (-(1 << 63), 0, grpc.StatusCode.OUT_OF_RANGE),
        (0, -(1 << 63), grpc.StatusCode.OUT_OF_RANGE),
        ((1 << 63) - 1, 1, grpc.StatusCode.OUT_OF_RANGE),
        ((1 << 63) - 1, 0, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (1 << 50, 0, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ],
)
def test_absurd_capacities_are_refused_and_touch_nothing(
    populated: Client, required: int, limit: int, code: grpc.StatusCode
) -> None:
    before = tree(populated.pool.root)
    request = csi_pb2.CreateVolumeRequest(
        name="absurd",
        capacity_range=csi_pb2.CapacityRange(required_bytes=required, limit_bytes=limit),
        volume_capabilities=[mount_capability()],
    )
    assert code_of(populated.controller.CreateVolume, request) == code
    assert tree(populated.pool.root) == before


@pytest.mark.kernel
def test_targets_reaching_into_the_pool_are_invalid(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("victim", 4 * MiB)
    root = kcsi.pool.root
    (tmp_path / "into-pool").symlink_to(root / "volumes")
    before = tree(root)
    for target in (
        root / "volumes" / volume.volume_id / "inner",
        tmp_path / "into-pool" / volume.volume_id,
        tmp_path / "into-pool" / "new",
        root / ".staging",
    ):
        request = csi_pb2.NodePublishVolumeRequest(
            volume_id=volume.volume_id, target_path=str(target), volume_capability=mount_capability()
        )
        assert code_of(kcsi.node.NodePublishVolume, request) == INVALID, target
    assert tree(root) == before


# property tests


@PROPERTY
@given(bad=ANY_TEXT)
def test_any_id_is_refused_or_unknown_and_touches_nothing(
    populated: Client, tmp_path: Path, bad: str
) -> None:
    root = populated.pool.root
    before = tree(root)
    target = tmp_path / "target"
    known = {"victim", "victim-snap"}
    for name, call, request in id_calls(populated, bad, target):
        code = code_of(call, request)
        if bad in known:
            continue  # a real ID: tested elsewhere
        allowed = {INVALID, NOT_FOUND}
        if name in ("DeleteVolume", "DeleteSnapshot", "ListSnapshots(snapshot)", "ListSnapshots(source)"):
            allowed.add(OK)  # absent is success for deletes, an empty list for filters
        assert code in allowed, (name, bad[:40], code)
    assert tree(root) == before
    assert not target.exists()


@PROPERTY
@given(name=ANY_TEXT)
def test_any_name_makes_one_safe_volume_or_nothing(populated: Client, name: str) -> None:
    root = populated.pool.root
    before = tree(root)
    request = csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=MiB),
        volume_capabilities=[mount_capability()],
    )
    try:
        volume = populated.controller.CreateVolume(request).volume
    except grpc.RpcError as exc:
        assert exc.code() in (INVALID, grpc.StatusCode.ALREADY_EXISTS), exc.details()
        assert tree(root) == before
        return
    assert SAFE_ID.fullmatch(volume.volume_id)
    mine = f"volumes/{volume.volume_id}"
    assert all(path == mine or path.startswith(mine + "/") for path in set(tree(root)) - set(before))
    populated.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))
    assert tree(root) == before


@PROPERTY
@given(required=st.integers(-(1 << 63), (1 << 63) - 1), limit=st.integers(-(1 << 63), (1 << 63) - 1))
def test_any_capacity_range_is_honoured_or_refused_cleanly(
    populated: Client, required: int, limit: int
) -> None:
    root = populated.pool.root
    before = tree(root)
    request = csi_pb2.CreateVolumeRequest(
        name="sized",
        capacity_range=csi_pb2.CapacityRange(required_bytes=required, limit_bytes=limit),
        volume_capabilities=[mount_capability()],
    )
    try:
        volume = populated.controller.CreateVolume(request).volume
    except grpc.RpcError as exc:
        assert exc.code() in (grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.RESOURCE_EXHAUSTED), exc.details()
        assert tree(root) == before
        return
    assert volume.capacity_bytes >= max(required, MIN_VOLUME_BYTES)
    assert not limit or volume.capacity_bytes <= limit
    populated.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))
    assert tree(root) == before
