"""Identity and Controller RPCs through a real gRPC client and server, on the fake pool and on a real
btrfs (kernel): the codes spec.md requires, and idempotency of every mutating call."""

import contextlib
from pathlib import Path

import grpc
import pytest

from btrfs_core.pool import MIN_VOLUME_BYTES, Pool
from csi.pb import csi_pb2
from tests.conftest import kernel_skip_reason
from tests.csi.conftest import NODE_ID, Client, GiB, MiB, Mode, code_of, error_of, mount_capability, serve
from tests.support import loop_pool

TOPOLOGY_KEY = "topology.btrfs.csi.dev/node"
OURS = csi_pb2.Topology(segments={TOPOLOGY_KEY: NODE_ID})
ELSEWHERE = csi_pb2.Topology(segments={TOPOLOGY_KEY: "node-2"})
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


def create_request(
    name: str = "pvc-1", capacity: int | None = 16 * MiB, **fields: object
) -> csi_pb2.CreateVolumeRequest:
    request = csi_pb2.CreateVolumeRequest(name=name, **fields)  # type: ignore[arg-type]
    if capacity is not None:
        request.capacity_range.required_bytes = capacity
    if "volume_capabilities" not in fields:
        request.volume_capabilities.append(mount_capability())
    return request


# Identity


def test_plugin_info_names_the_driver(csi: Client) -> None:
    info = csi.identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest())
    assert info.name == "btrfs.csi.dev"
    assert info.vendor_version


def test_plugin_capabilities(csi: Client) -> None:
    caps = csi.identity.GetPluginCapabilities(csi_pb2.GetPluginCapabilitiesRequest()).capabilities
    services = {cap.service.type for cap in caps if cap.HasField("service")}
    expansion = {cap.volume_expansion.type for cap in caps if cap.HasField("volume_expansion")}
    Service, Expansion = csi_pb2.PluginCapability.Service, csi_pb2.PluginCapability.VolumeExpansion
    assert services == {Service.CONTROLLER_SERVICE, Service.VOLUME_ACCESSIBILITY_CONSTRAINTS}
    assert expansion == {Expansion.ONLINE}


def test_probe_is_ready(csi: Client) -> None:
    response = csi.identity.Probe(csi_pb2.ProbeRequest())
    assert response.HasField("ready") and response.ready.value


def test_controller_capabilities(csi: Client) -> None:
    RPC = csi_pb2.ControllerServiceCapability.RPC
    caps = csi.controller.ControllerGetCapabilities(csi_pb2.ControllerGetCapabilitiesRequest()).capabilities
    assert {cap.rpc.type for cap in caps} == {
        RPC.CREATE_DELETE_VOLUME,
        RPC.CREATE_DELETE_SNAPSHOT,
        RPC.LIST_SNAPSHOTS,
        RPC.CLONE_VOLUME,
        RPC.LIST_VOLUMES,
        RPC.GET_CAPACITY,
        RPC.GET_VOLUME,
        RPC.VOLUME_CONDITION,
        RPC.SINGLE_NODE_MULTI_WRITER,
        RPC.GET_SNAPSHOT,
        RPC.MODIFY_VOLUME,
    }


@pytest.mark.parametrize(
    ("method", "request_type"),
    [
        ("ControllerPublishVolume", csi_pb2.ControllerPublishVolumeRequest),
        ("ControllerUnpublishVolume", csi_pb2.ControllerUnpublishVolumeRequest),
        ("ControllerExpandVolume", csi_pb2.ControllerExpandVolumeRequest),
    ],
)
def test_rpcs_not_advertised_are_unimplemented(csi: Client, method: str, request_type: type) -> None:
    assert (
        code_of(getattr(csi.controller, method), request_type(volume_id="pvc-1"))
        == grpc.StatusCode.UNIMPLEMENTED
    )


# CreateVolume


def test_create_volume_returns_the_volume_on_this_node(csi: Client) -> None:
    volume = csi.controller.CreateVolume(create_request()).volume
    assert volume.volume_id == csi.pool.volume_id("pvc-1")
    assert volume.capacity_bytes == 16 * MiB
    assert list(volume.accessible_topology) == [OURS]
    assert not volume.volume_context
    assert not volume.HasField("content_source")


def test_create_volume_is_idempotent(csi: Client) -> None:
    first = csi.controller.CreateVolume(create_request())
    assert csi.controller.CreateVolume(create_request()) == first
    assert len(csi.pool.list_volumes()) == 1


@pytest.mark.parametrize(
    ("missing", "request_fields"),
    [
        ("name", {"name": ""}),
        ("volume_capabilities", {"volume_capabilities": []}),
    ],
)
def test_create_volume_requires_fields(csi: Client, missing: str, request_fields: dict[str, object]) -> None:
    error = error_of(csi.controller.CreateVolume, create_request(**request_fields))  # type: ignore[arg-type]
    assert error.code() == INVALID
    assert missing in error.details()  # type: ignore[operator]


@pytest.mark.parametrize(
    "capability",
    [
        csi_pb2.VolumeCapability(
            access_mode=csi_pb2.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER)
        ),
        csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume()),
        mount_capability(Mode.UNKNOWN),
        csi_pb2.VolumeCapability(
            block=csi_pb2.VolumeCapability.BlockVolume(),
            access_mode=csi_pb2.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER),
        ),
        mount_capability(Mode.MULTI_NODE_READER_ONLY),
        mount_capability(Mode.MULTI_NODE_SINGLE_WRITER),
        mount_capability(Mode.MULTI_NODE_MULTI_WRITER),
        mount_capability(fs_type="ext4"),
        mount_capability(volume_mount_group="1000"),
        mount_capability(mount_flags=["compress=zstd"]),
    ],
    ids=[
        "no-access-type",
        "no-access-mode",
        "unknown-mode",
        "block",
        "mnro",
        "mnsw",
        "mnmw",
        "ext4",
        "group",
        "flag",
    ],
)
def test_create_volume_refuses_capabilities_it_cannot_serve(
    csi: Client, capability: csi_pb2.VolumeCapability
) -> None:
    request = create_request(volume_capabilities=[mount_capability(), capability])
    assert code_of(csi.controller.CreateVolume, request) == INVALID
    assert csi.pool.list_volumes() == []


@pytest.mark.parametrize(
    "mode",
    [
        Mode.SINGLE_NODE_WRITER,
        Mode.SINGLE_NODE_READER_ONLY,
        Mode.SINGLE_NODE_SINGLE_WRITER,
        Mode.SINGLE_NODE_MULTI_WRITER,
    ],
)
def test_create_volume_accepts_single_node_modes(csi: Client, mode: int) -> None:
    capability = mount_capability(mode, fs_type="btrfs", mount_flags=["noatime", "nosuid"])
    volume = csi.controller.CreateVolume(create_request(volume_capabilities=[capability])).volume
    assert volume.volume_id == csi.pool.volume_id("pvc-1") and volume.capacity_bytes == 16 * MiB
    assert [v.id for v in csi.pool.list_volumes()] == [volume.volume_id]


def test_create_volume_refuses_unknown_parameters(csi: Client) -> None:
    request = create_request(parameters={"compresion": "zstd"})
    error = error_of(csi.controller.CreateVolume, request)
    assert error.code() == INVALID and "compresion" in (error.details() or "")


def test_create_volume_keeps_claim_metadata_from_the_provisioner(csi: Client) -> None:
    parameters = {
        "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "shop",
        "csi.storage.k8s.io/pv/name": "pvc-1",
        "csi.storage.k8s.io/fstype": "",  # other sidecar keys pass without being kept
    }
    volume = csi.controller.CreateVolume(create_request(parameters=parameters)).volume
    assert csi.pool.get_volume(volume.volume_id).metadata == {
        "csi.storage.k8s.io/pvc/name": "data",
        "csi.storage.k8s.io/pvc/namespace": "shop",
        "csi.storage.k8s.io/pv/name": "pvc-1",
    }
    assert not volume.volume_context


def test_create_volume_refuses_mutable_parameters(csi: Client) -> None:
    assert code_of(csi.controller.CreateVolume, create_request(mutable_parameters={"iops": "1"})) == INVALID


@pytest.mark.parametrize(
    ("required", "limit", "capacity"),
    [
        (0, 0, GiB // 4),  # no range: the default, here cut to fit the pool is not needed (see below)
        (5 * MiB, 0, 5 * MiB),
        (5 * MiB, 5 * MiB, 5 * MiB),
        (0, 3 * MiB, 3 * MiB),  # only a limit: the default cut down to it
        (1, 0, MIN_VOLUME_BYTES),  # below the minimum: rounded up
        (1, 2 * MiB, MIN_VOLUME_BYTES),
    ],
)
def test_create_volume_capacity_from_range(csi: Client, required: int, limit: int, capacity: int) -> None:
    request = create_request(capacity=None)
    if required or limit:
        request.capacity_range.CopyFrom(csi_pb2.CapacityRange(required_bytes=required, limit_bytes=limit))
        assert csi.controller.CreateVolume(request).volume.capacity_bytes == capacity
    else:
        # The default is 1 GiB: on the 1 GiB test pool that does not fit, which is the pool's call.
        code = code_of(csi.controller.CreateVolume, request)
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED)
        if code == grpc.StatusCode.OK:
            assert csi.pool.list_volumes()[0].capacity == GiB


@pytest.mark.parametrize(
    ("required", "limit"),
    [(-1, 0), (0, -1), (8 * MiB, 4 * MiB), (0, MIN_VOLUME_BYTES - 1), (-(1 << 63), 1 << 62)],
)
def test_create_volume_refuses_unsatisfiable_capacity(csi: Client, required: int, limit: int) -> None:
    request = create_request(capacity=None)
    request.capacity_range.CopyFrom(csi_pb2.CapacityRange(required_bytes=required, limit_bytes=limit))
    assert code_of(csi.controller.CreateVolume, request) == grpc.StatusCode.OUT_OF_RANGE
    assert csi.pool.list_volumes() == []


@pytest.mark.parametrize("required", [64 * GiB, (1 << 63) - 1])
def test_create_volume_larger_than_the_pool_is_resource_exhausted(csi: Client, required: int) -> None:
    assert (
        code_of(csi.controller.CreateVolume, create_request(capacity=required))
        == grpc.StatusCode.RESOURCE_EXHAUSTED
    )
    assert csi.pool.list_volumes() == []


def test_create_volume_same_name_other_capacity_is_already_exists(csi: Client) -> None:
    csi.controller.CreateVolume(create_request(capacity=16 * MiB))
    assert (
        code_of(csi.controller.CreateVolume, create_request(capacity=32 * MiB))
        == grpc.StatusCode.ALREADY_EXISTS
    )


def test_create_volume_accepts_an_existing_volume_within_the_range(csi: Client) -> None:
    first = csi.controller.CreateVolume(create_request(capacity=16 * MiB)).volume
    request = create_request(capacity=None)
    request.capacity_range.CopyFrom(csi_pb2.CapacityRange(required_bytes=8 * MiB, limit_bytes=32 * MiB))
    assert csi.controller.CreateVolume(request).volume == first
    request.capacity_range.CopyFrom(csi_pb2.CapacityRange(required_bytes=8 * MiB, limit_bytes=12 * MiB))
    assert code_of(csi.controller.CreateVolume, request) == grpc.StatusCode.ALREADY_EXISTS


def test_create_volume_same_name_other_source_is_already_exists(csi: Client) -> None:
    source = csi.create_volume("source")
    csi.controller.CreateVolume(create_request())
    clone = create_request(
        volume_content_source=csi_pb2.VolumeContentSource(
            volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source.volume_id)
        )
    )
    assert code_of(csi.controller.CreateVolume, clone) == grpc.StatusCode.ALREADY_EXISTS


def test_create_volume_same_name_other_parameters_is_already_exists(csi: Client) -> None:
    claim = {"csi.storage.k8s.io/pvc/name": "data", "csi.storage.k8s.io/pvc/namespace": "team"}
    first = csi.controller.CreateVolume(create_request(parameters=claim)).volume
    assert csi.controller.CreateVolume(create_request(parameters=claim)).volume == first
    other = {**claim, "csi.storage.k8s.io/pvc/name": "other"}
    error = error_of(csi.controller.CreateVolume, create_request(parameters=other))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "pvc/name" in (error.details() or "")
    assert csi.pool.get_volume(first.volume_id).metadata == claim  # the labels stay the first claim's


@pytest.mark.kernel
def test_restore_and_clone_without_a_range_take_a_big_sources_size(socket_dir: Path) -> None:
    """Above the 1 GiB default, on a 4 GiB pool: the source's size, not OUT_OF_RANGE; a limit that admits
    it is accepted, one below it is OUT_OF_RANGE."""
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    with (
        loop_pool(size=4 << 30) as mountpoint,
        contextlib.contextmanager(serve)(Pool.open(mountpoint, overprovision=2.0), socket_dir) as client,
    ):
        big = client.create_volume("big", 1536 * MiB)
        snapshot = client.create_snapshot("big-snap", big.volume_id)
        for name, source, limit in (
            ("restored", snapshot_source(snapshot.snapshot_id), 0),  # no range at all
            ("cloned", volume_source(big.volume_id), 2 * big.capacity_bytes),  # a limit that admits it
        ):
            request = create_request(name, capacity=None, volume_content_source=source)
            if limit:
                request.capacity_range.limit_bytes = limit
            assert client.controller.CreateVolume(request).volume.capacity_bytes == big.capacity_bytes
            request.name, request.capacity_range.limit_bytes = f"{name}-small", GiB
            assert code_of(client.controller.CreateVolume, request) == grpc.StatusCode.OUT_OF_RANGE


def snapshot_source(snapshot_id: str) -> csi_pb2.VolumeContentSource:
    return csi_pb2.VolumeContentSource(
        snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot_id)
    )


def volume_source(volume_id: str) -> csi_pb2.VolumeContentSource:
    return csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=volume_id))


def test_restore_and_clone_return_their_source_and_are_idempotent(csi: Client) -> None:
    source = csi.create_volume("source", 16 * MiB)
    snapshot = csi.create_snapshot("snap", source.volume_id)
    for name, content in (
        ("restored", snapshot_source(snapshot.snapshot_id)),
        ("clone", volume_source(source.volume_id)),
    ):
        request = create_request(name, 32 * MiB, volume_content_source=content)
        first = csi.controller.CreateVolume(request)
        assert first.volume.content_source == content
        assert first.volume.capacity_bytes == 32 * MiB  # its own limit, larger than the source's
        assert csi.controller.CreateVolume(request) == first


@pytest.mark.parametrize("kind", ["snapshot", "volume"])
def test_create_volume_from_a_missing_source_is_not_found(csi: Client, kind: str) -> None:
    content = snapshot_source("no-such-snapshot") if kind == "snapshot" else volume_source("no-such-volume")
    assert code_of(csi.controller.CreateVolume, create_request(volume_content_source=content)) == NOT_FOUND
    assert csi.pool.list_volumes() == []


@pytest.mark.parametrize(
    "content",
    [csi_pb2.VolumeContentSource(), snapshot_source(""), volume_source(""), volume_source("../etc")],
    ids=["empty", "empty-snapshot-id", "empty-volume-id", "dotdot"],
)
def test_create_volume_from_a_malformed_source_is_invalid(
    csi: Client, content: csi_pb2.VolumeContentSource
) -> None:
    assert code_of(csi.controller.CreateVolume, create_request(volume_content_source=content)) == INVALID


def test_restore_smaller_than_the_snapshot_is_out_of_range(csi: Client) -> None:
    source = csi.create_volume("source", 16 * MiB)
    snapshot = csi.create_snapshot("snap", source.volume_id)
    request = create_request("small", 8 * MiB, volume_content_source=snapshot_source(snapshot.snapshot_id))
    assert code_of(csi.controller.CreateVolume, request) == grpc.StatusCode.OUT_OF_RANGE


@pytest.mark.parametrize(
    ("requisite", "preferred", "code"),
    [
        ([OURS], [], grpc.StatusCode.OK),
        ([], [OURS], grpc.StatusCode.OK),
        ([ELSEWHERE, OURS], [OURS], grpc.StatusCode.OK),
        ([ELSEWHERE], [], grpc.StatusCode.RESOURCE_EXHAUSTED),
        ([], [ELSEWHERE], grpc.StatusCode.RESOURCE_EXHAUSTED),
        ([csi_pb2.Topology(segments={"zone": "a"})], [], grpc.StatusCode.RESOURCE_EXHAUSTED),
        ([], [], grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_create_volume_honours_accessibility_requirements(
    csi: Client, requisite: list[csi_pb2.Topology], preferred: list[csi_pb2.Topology], code: grpc.StatusCode
) -> None:
    requirement = csi_pb2.TopologyRequirement(requisite=requisite, preferred=preferred)
    assert (
        code_of(csi.controller.CreateVolume, create_request(accessibility_requirements=requirement)) == code
    )
    assert len(csi.pool.list_volumes()) == (1 if code == grpc.StatusCode.OK else 0)


# DeleteVolume


def test_delete_volume_is_idempotent(csi: Client) -> None:
    volume = csi.create_volume("pvc-1")
    for _ in range(2):
        csi.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id))
        assert csi.pool.list_volumes() == []


def test_delete_unknown_volume_is_ok(csi: Client) -> None:
    kept = csi.create_volume("pvc-1")
    response = csi.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id="never-created"))
    assert response == csi_pb2.DeleteVolumeResponse()
    assert [v.id for v in csi.pool.list_volumes()] == [kept.volume_id]


def test_delete_volume_requires_an_id(csi: Client) -> None:
    assert code_of(csi.controller.DeleteVolume, csi_pb2.DeleteVolumeRequest()) == INVALID


def test_delete_volume_keeps_its_snapshots_usable(csi: Client) -> None:
    source = csi.create_volume("source")
    snapshot = csi.create_snapshot("snap", source.volume_id)
    csi.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=source.volume_id))
    listed = csi.controller.ListSnapshots(csi_pb2.ListSnapshotsRequest()).entries
    assert [entry.snapshot.snapshot_id for entry in listed] == [snapshot.snapshot_id]
    csi.controller.CreateVolume(
        create_request("restored", volume_content_source=snapshot_source(snapshot.snapshot_id))
    )


# ValidateVolumeCapabilities


def validate_request(
    volume_id: str, *caps: csi_pb2.VolumeCapability, **fields: object
) -> csi_pb2.ValidateVolumeCapabilitiesRequest:
    return csi_pb2.ValidateVolumeCapabilitiesRequest(volume_id=volume_id, volume_capabilities=caps, **fields)  # type: ignore[arg-type]


def test_validate_confirms_supported_capabilities(csi: Client) -> None:
    volume = csi.create_volume("pvc-1")
    caps = (mount_capability(Mode.SINGLE_NODE_WRITER), mount_capability(Mode.SINGLE_NODE_READER_ONLY))
    response = csi.controller.ValidateVolumeCapabilities(validate_request(volume.volume_id, *caps))
    assert list(response.confirmed.volume_capabilities) == list(caps)


@pytest.mark.parametrize(
    "capability",
    [
        mount_capability(Mode.MULTI_NODE_MULTI_WRITER),
        csi_pb2.VolumeCapability(
            block=csi_pb2.VolumeCapability.BlockVolume(),
            access_mode=csi_pb2.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER),
        ),
    ],
    ids=["multi-node", "block"],
)
def test_validate_does_not_confirm_unsupported_capabilities(
    csi: Client, capability: csi_pb2.VolumeCapability
) -> None:
    volume = csi.create_volume("pvc-1")
    response = csi.controller.ValidateVolumeCapabilities(
        validate_request(volume.volume_id, mount_capability(), capability)
    )
    assert not response.HasField("confirmed")
    assert response.message


def test_validate_does_not_confirm_unknown_parameters(csi: Client) -> None:
    volume = csi.create_volume("pvc-1")
    request = validate_request(volume.volume_id, mount_capability(), parameters={"speed": "fast"})
    response = csi.controller.ValidateVolumeCapabilities(request)
    assert not response.HasField("confirmed") and "speed" in response.message


def test_validate_errors(csi: Client) -> None:
    volume = csi.create_volume("pvc-1")
    validate = csi.controller.ValidateVolumeCapabilities
    assert code_of(validate, validate_request("", mount_capability())) == INVALID
    assert code_of(validate, validate_request(volume.volume_id)) == INVALID
    assert code_of(validate, validate_request("no-such-volume", mount_capability())) == NOT_FOUND


# ListVolumes


def test_list_volumes_pages_through_every_volume_once(csi: Client) -> None:
    names = [f"pvc-{i}" for i in range(5)]
    for name in names:
        csi.create_volume(name, 2 * MiB)
    seen: list[str] = []
    token = ""
    while True:
        page = csi.controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=2, starting_token=token))
        assert len(page.entries) <= 2
        seen += [entry.volume.volume_id for entry in page.entries]
        for entry in page.entries:
            assert entry.status.HasField("volume_condition")
            assert list(entry.volume.accessible_topology) == [OURS]
        token = page.next_token
        if not token:
            break
    assert sorted(seen) == sorted(csi.pool.volume_id(name) for name in names)
    everything = csi.controller.ListVolumes(csi_pb2.ListVolumesRequest())
    assert len(everything.entries) == 5 and not everything.next_token


def test_list_volumes_token_survives_deleting_the_last_listed_volume(csi: Client) -> None:
    for name in ("a", "b", "c"):
        csi.create_volume(name, 2 * MiB)
    first = csi.controller.ListVolumes(csi_pb2.ListVolumesRequest(max_entries=1))
    csi.controller.DeleteVolume(csi_pb2.DeleteVolumeRequest(volume_id=first.entries[0].volume.volume_id))
    rest = csi.controller.ListVolumes(csi_pb2.ListVolumesRequest(starting_token=first.next_token))
    assert [entry.volume.volume_id for entry in rest.entries] == ["b", "c"]


@pytest.mark.parametrize("token", ["invalid-token", "after:", "after:../x", "after:" + "x" * 300])
def test_list_volumes_bad_token_is_aborted(csi: Client, token: str) -> None:
    request = csi_pb2.ListVolumesRequest(starting_token=token)
    assert code_of(csi.controller.ListVolumes, request) == grpc.StatusCode.ABORTED


def test_list_volumes_negative_max_entries_is_invalid(csi: Client) -> None:
    assert code_of(csi.controller.ListVolumes, csi_pb2.ListVolumesRequest(max_entries=-1)) == INVALID


# GetCapacity


def test_get_capacity_for_this_node(csi: Client) -> None:
    before = csi.controller.GetCapacity(csi_pb2.GetCapacityRequest(accessible_topology=OURS))
    assert 0 < before.available_capacity <= GiB
    assert before.maximum_volume_size.value == before.available_capacity
    assert before.minimum_volume_size.value == MIN_VOLUME_BYTES
    # Capacity promised to volumes counts as taken, whether or not it is written yet.
    csi.create_volume("pvc-1", GiB // 2)
    after = csi.controller.GetCapacity(csi_pb2.GetCapacityRequest(volume_capabilities=[mount_capability()]))
    assert after.available_capacity <= GiB // 2


def test_get_capacity_elsewhere_or_for_unsupported_capabilities_is_zero(csi: Client) -> None:
    assert (
        csi.controller.GetCapacity(
            csi_pb2.GetCapacityRequest(accessible_topology=ELSEWHERE)
        ).available_capacity
        == 0
    )
    request = csi_pb2.GetCapacityRequest(volume_capabilities=[mount_capability(Mode.MULTI_NODE_MULTI_WRITER)])
    assert csi.controller.GetCapacity(request).available_capacity == 0


def test_get_capacity_refuses_unknown_parameters(csi: Client) -> None:
    assert code_of(csi.controller.GetCapacity, csi_pb2.GetCapacityRequest(parameters={"x": "y"})) == INVALID


# ControllerGetVolume


def test_controller_get_volume(csi: Client) -> None:
    volume = csi.create_volume("pvc-1")
    response = csi.controller.ControllerGetVolume(
        csi_pb2.ControllerGetVolumeRequest(volume_id=volume.volume_id)
    )
    assert dict(response.volume.volume_context) == {"nodatacow": "false"}  # its tuning (none asked)
    response.volume.ClearField("volume_context")
    assert response.volume == volume
    assert response.status.HasField("volume_condition")
    assert response.status.volume_condition.message
    get = csi.controller.ControllerGetVolume
    assert code_of(get, csi_pb2.ControllerGetVolumeRequest()) == INVALID
    assert code_of(get, csi_pb2.ControllerGetVolumeRequest(volume_id="no-such-volume")) == NOT_FOUND


# snapshots


def test_create_snapshot_is_idempotent_and_ready(csi: Client) -> None:
    volume = csi.create_volume("pvc-1", 16 * MiB)
    request = csi_pb2.CreateSnapshotRequest(name="snap-1", source_volume_id=volume.volume_id)
    first = csi.controller.CreateSnapshot(request)
    assert first.snapshot.ready_to_use
    assert first.snapshot.size_bytes == 16 * MiB
    assert first.snapshot.source_volume_id == volume.volume_id
    assert first.snapshot.creation_time.seconds > 0
    assert csi.controller.CreateSnapshot(request) == first


def test_create_snapshot_errors(csi: Client) -> None:
    volume = csi.create_volume("pvc-1")
    other = csi.create_volume("pvc-2")
    create = csi.controller.CreateSnapshot
    assert code_of(create, csi_pb2.CreateSnapshotRequest(source_volume_id=volume.volume_id)) == INVALID
    assert code_of(create, csi_pb2.CreateSnapshotRequest(name="snap")) == INVALID
    assert (
        code_of(create, csi_pb2.CreateSnapshotRequest(name="snap", source_volume_id="no-such")) == NOT_FOUND
    )
    request = csi_pb2.CreateSnapshotRequest(
        name="snap", source_volume_id=volume.volume_id, parameters={"a": "b"}
    )
    assert code_of(create, request) == INVALID
    csi.create_snapshot("snap", volume.volume_id)
    request = csi_pb2.CreateSnapshotRequest(name="snap", source_volume_id=other.volume_id)
    assert code_of(create, request) == grpc.StatusCode.ALREADY_EXISTS


def test_create_snapshot_accepts_snapshotter_metadata(csi: Client) -> None:
    volume = csi.create_volume("pvc-1")
    parameters = {
        "csi.storage.k8s.io/volumesnapshot/name": "s",
        "csi.storage.k8s.io/volumesnapshot/namespace": "n",
    }
    request = csi_pb2.CreateSnapshotRequest(
        name="snap", source_volume_id=volume.volume_id, parameters=parameters
    )
    snapshot = csi.controller.CreateSnapshot(request).snapshot
    assert snapshot.source_volume_id == volume.volume_id and snapshot.ready_to_use
    assert [s.id for s in csi.pool.list_snapshots()] == [snapshot.snapshot_id]


def test_delete_snapshot_is_idempotent(csi: Client) -> None:
    volume = csi.create_volume("pvc-1")
    snapshot = csi.create_snapshot("snap", volume.volume_id)
    for _ in range(2):
        csi.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot.snapshot_id))
    assert csi.pool.list_snapshots() == []
    csi.controller.DeleteSnapshot(csi_pb2.DeleteSnapshotRequest(snapshot_id="never-taken"))
    assert code_of(csi.controller.DeleteSnapshot, csi_pb2.DeleteSnapshotRequest()) == INVALID


def test_get_snapshot(csi: Client) -> None:
    volume = csi.create_volume("pvc-1")
    snapshot = csi.create_snapshot("snap", volume.volume_id)
    get = csi.controller.GetSnapshot
    assert get(csi_pb2.GetSnapshotRequest(snapshot_id=snapshot.snapshot_id)).snapshot == snapshot
    assert code_of(get, csi_pb2.GetSnapshotRequest()) == INVALID
    assert code_of(get, csi_pb2.GetSnapshotRequest(snapshot_id="no-such")) == NOT_FOUND


def test_list_snapshots_filters_and_pages(csi: Client) -> None:
    a, b = csi.create_volume("a", 2 * MiB), csi.create_volume("b", 2 * MiB)
    taken = [csi.create_snapshot(f"snap-{i}", (a if i % 2 else b).volume_id) for i in range(5)]
    listing = csi.controller.ListSnapshots
    all_ids = sorted(snapshot.snapshot_id for snapshot in taken)
    seen: list[str] = []
    token = ""
    while True:
        page = listing(csi_pb2.ListSnapshotsRequest(max_entries=2, starting_token=token))
        assert len(page.entries) <= 2
        seen += [entry.snapshot.snapshot_id for entry in page.entries]
        token = page.next_token
        if not token:
            break
    assert seen == all_ids
    of_a = listing(csi_pb2.ListSnapshotsRequest(source_volume_id=a.volume_id)).entries
    assert {entry.snapshot.source_volume_id for entry in of_a} == {a.volume_id} and len(of_a) == 2
    one = listing(csi_pb2.ListSnapshotsRequest(snapshot_id=taken[0].snapshot_id)).entries
    assert [entry.snapshot for entry in one] == [taken[0]]
    assert listing(csi_pb2.ListSnapshotsRequest(snapshot_id="no-such")).entries == []
    assert listing(csi_pb2.ListSnapshotsRequest(source_volume_id="no-such")).entries == []
    both = csi_pb2.ListSnapshotsRequest(snapshot_id=taken[0].snapshot_id, source_volume_id=a.volume_id)
    assert listing(both).entries == []  # taken[0] is of b
    assert (
        code_of(listing, csi_pb2.ListSnapshotsRequest(starting_token="invalid-token"))
        == grpc.StatusCode.ABORTED
    )
    assert code_of(listing, csi_pb2.ListSnapshotsRequest(max_entries=-3)) == INVALID
