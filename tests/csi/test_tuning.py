"""Tuning through the CSI surface, on the fake and the real kernel: StorageClass parameters and a
VolumeAttributesClass's mutable_parameters at creation, what volume_context shows, and every refusal
with the key it names."""

import grpc
import pytest

from btrfs_core.models import PV_NAME_KEY, PVC_NAME_KEY, PVC_NAMESPACE_KEY
from csi.pb import csi_pb2
from tests.csi.conftest import NODE_ID, Client, code_of, error_of
from tests.csi.test_conformance_controller import create_request

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def context_of(csi: Client, volume_id: str) -> dict[str, str]:
    got = csi.controller.ControllerGetVolume(csi_pb2.ControllerGetVolumeRequest(volume_id=volume_id))
    listed = csi.controller.ListVolumes(csi_pb2.ListVolumesRequest()).entries
    [entry] = [entry for entry in listed if entry.volume.volume_id == volume_id]
    assert dict(entry.volume.volume_context) == dict(got.volume.volume_context)
    return dict(got.volume.volume_context)


@pytest.mark.parametrize(
    ("parameters", "mutable", "context"),
    [
        ({}, {}, {"nodatacow": "false"}),
        ({"compression": "zstd:15"}, {}, {"compression": "zstd:15", "nodatacow": "false"}),
        ({"compression": "zlib"}, {"compression": "lzo"}, {"compression": "lzo", "nodatacow": "false"}),
        ({"nodatacow": "true"}, {}, {"nodatacow": "true"}),
        ({"nodatacow": "true", "compression": "none"}, {}, {"compression": "none", "nodatacow": "true"}),
    ],
    ids=["none-asked", "zstd-level", "class-over-storage-class", "nodatacow", "nodatacow-none"],
)
def test_the_tuning_asked_for_shows_in_volume_context(
    csi: Client, parameters: dict[str, str], mutable: dict[str, str], context: dict[str, str]
) -> None:
    request = create_request(parameters=parameters, mutable_parameters=mutable)
    created = csi.controller.CreateVolume(request).volume
    assert not created.volume_context  # the PV would keep a copy that a modify makes stale
    assert context_of(csi, created.volume_id) == context
    assert csi.controller.CreateVolume(request).volume == created  # idempotent


@pytest.mark.parametrize(
    ("field", "values", "named"),
    [
        ("parameters", {"compression": "lz4"}, "parameters.compression"),
        ("parameters", {"compression": "zstd:16"}, "parameters.compression"),
        ("parameters", {"compression": "zstd:0"}, "parameters.compression"),
        ("parameters", {"compression": "zlib:10"}, "parameters.compression"),
        ("parameters", {"compression": "lzo:1"}, "parameters.compression"),
        ("parameters", {"compression": "zstd:"}, "parameters.compression"),
        ("parameters", {"compression": ""}, "parameters.compression"),
        ("parameters", {"nodatacow": "yes"}, "parameters.nodatacow"),
        ("parameters", {"nodatacow": "true", "compression": "zstd"}, "parameters.nodatacow"),
        ("parameters", {"Compression": "zstd"}, "'Compression'"),
        ("mutable_parameters", {"compression": "brotli"}, "mutable_parameters.compression"),
        ("mutable_parameters", {"nodatacow": "true"}, "mutable_parameters.nodatacow"),
        ("mutable_parameters", {"XXX_FakeKey": "XXX_FakeValue"}, "'XXX_FakeKey'"),
    ],
)
def test_bad_parameters_are_refused_naming_the_key(
    csi: Client, field: str, values: dict[str, str], named: str
) -> None:
    fields: dict[str, object] = {field: values}
    error = error_of(csi.controller.CreateVolume, create_request("pvc-1", 16 << 20, **fields))
    assert error.code() == INVALID and named in (error.details() or ""), error.details()
    assert not csi.pool.list_volumes()
    validate = csi_pb2.ValidateVolumeCapabilitiesRequest(
        volume_id=csi.controller.CreateVolume(create_request("pvc-ok")).volume.volume_id,
        volume_capabilities=create_request().volume_capabilities,
        **fields,  # type: ignore[arg-type]
    )
    answer = csi.controller.ValidateVolumeCapabilities(validate)
    assert not answer.HasField("confirmed") and named in answer.message


def test_a_bad_storage_class_compression_is_refused_even_under_a_class_that_names_one(csi: Client) -> None:
    request = create_request(
        parameters={"compression": "zstd:99"}, mutable_parameters={"compression": "zstd"}
    )
    error = error_of(csi.controller.CreateVolume, request)
    assert error.code() == INVALID and "parameters.compression" in (error.details() or "")


def test_mutable_parameters_nodatacow_with_compression_in_the_class_is_refused(csi: Client) -> None:
    request = create_request(parameters={"nodatacow": "true"}, mutable_parameters={"compression": "zstd"})
    error = error_of(csi.controller.CreateVolume, request)
    assert error.code() == INVALID and "nodatacow" in (error.details() or "")


def test_a_repeated_create_with_other_parameters_already_exists(csi: Client) -> None:
    csi.controller.CreateVolume(create_request(parameters={"compression": "zstd"}))
    for other in ({}, {"compression": "zstd:3"}, {"compression": "none"}, {"nodatacow": "true"}):
        error = error_of(csi.controller.CreateVolume, create_request(parameters=other))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS, other
        assert "compression zstd, nodatacow false" in (error.details() or "")
    assert csi.controller.CreateVolume(create_request(mutable_parameters={"compression": "zstd"}))


def test_a_clone_keeps_its_sources_tuning_or_takes_its_own(csi: Client) -> None:
    source = csi.controller.CreateVolume(create_request("pvc-src", parameters={"compression": "zstd"})).volume
    content = csi_pb2.VolumeContentSource(
        volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source.volume_id)
    )
    kept = csi.controller.CreateVolume(create_request("pvc-kept", volume_content_source=content)).volume
    assert context_of(csi, kept.volume_id) == {"compression": "zstd", "nodatacow": "false"}
    own = create_request("pvc-own", volume_content_source=content, parameters={"nodatacow": "true"})
    assert context_of(csi, csi.controller.CreateVolume(own).volume.volume_id) == {"nodatacow": "true"}


# ControllerModifyVolume


def modify(csi: Client, volume_id: str, **mutable: str) -> grpc.StatusCode:
    request = csi_pb2.ControllerModifyVolumeRequest(volume_id=volume_id, mutable_parameters=mutable)
    return code_of(csi.controller.ControllerModifyVolume, request)


def test_modify_changes_the_compression_idempotently(csi: Client) -> None:
    volume_id = csi.controller.CreateVolume(create_request()).volume.volume_id
    assert modify(csi, volume_id, compression="zstd:3") == grpc.StatusCode.OK
    assert modify(csi, volume_id, compression="zstd:3") == grpc.StatusCode.OK
    assert context_of(csi, volume_id) == {"compression": "zstd:3", "nodatacow": "false"}
    # the keys the resizer adds with --extra-modify-metadata pass, and are not kept
    sidecar = {PV_NAME_KEY: "pvc-1", PVC_NAME_KEY: "data", PVC_NAMESPACE_KEY: "shop"}
    assert modify(csi, volume_id, compression="none", **sidecar) == grpc.StatusCode.OK
    assert context_of(csi, volume_id) == {"compression": "none", "nodatacow": "false"}
    assert modify(csi, volume_id) == grpc.StatusCode.OK  # a class without parameters changes nothing
    assert context_of(csi, volume_id) == {"compression": "none", "nodatacow": "false"}


@pytest.mark.parametrize(
    ("mutable", "named"),
    [
        ({"compression": "zstd:20"}, "mutable_parameters.compression"),
        ({"compression": "gzip"}, "mutable_parameters.compression"),
        ({"nodatacow": "true"}, "mutable_parameters.nodatacow"),
        ({"nodatacow": "false"}, "mutable_parameters.nodatacow"),
        ({"XXX_FakeKey": "XXX_FakeValue"}, "'XXX_FakeKey'"),
    ],
)
def test_modify_refuses_bad_mutable_parameters_naming_the_key(
    csi: Client, mutable: dict[str, str], named: str
) -> None:
    volume_id = csi.controller.CreateVolume(
        create_request(parameters={"compression": "lzo"})
    ).volume.volume_id
    request = csi_pb2.ControllerModifyVolumeRequest(volume_id=volume_id, mutable_parameters=mutable)
    error = error_of(csi.controller.ControllerModifyVolume, request)
    assert error.code() == INVALID and named in (error.details() or ""), error.details()
    assert context_of(csi, volume_id) == {"compression": "lzo", "nodatacow": "false"}


def test_modify_refuses_compression_on_a_nodatacow_volume(csi: Client) -> None:
    volume_id = csi.controller.CreateVolume(create_request(parameters={"nodatacow": "true"})).volume.volume_id
    request = csi_pb2.ControllerModifyVolumeRequest(
        volume_id=volume_id, mutable_parameters={"compression": "zstd"}
    )
    error = error_of(csi.controller.ControllerModifyVolume, request)
    assert error.code() == INVALID and "nodatacow" in (error.details() or "")
    assert modify(csi, volume_id, compression="none") == grpc.StatusCode.OK


def test_modify_needs_a_volume_id_and_an_existing_volume(csi: Client) -> None:
    assert modify(csi, "", compression="zstd") == INVALID
    assert modify(csi, "../etc", compression="zstd") == INVALID
    assert modify(csi, "non-existing-volume-id", compression="zstd") == grpc.StatusCode.NOT_FOUND
    # a PV name that is not the volume's: not a volume of this driver anywhere
    assert modify(csi, "pvc-2", compression="zstd", **{PV_NAME_KEY: "pvc-3"}) == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("pv_name", ["pvc-0f9e8d", "pvc-" + "x" * 120], ids=["plain-id", "hashed-id"])
def test_modify_of_a_volume_held_by_another_node_is_retried_later(csi: Client, pv_name: str) -> None:
    """The resizer names the PV: a volume of this driver that this node does not hold is UNAVAILABLE
    (not final: the resizer retries), never NOT_FOUND."""
    volume_id = csi.pool.volume_id(pv_name)
    request = csi_pb2.ControllerModifyVolumeRequest(
        volume_id=volume_id, mutable_parameters={"compression": "zstd", PV_NAME_KEY: pv_name}
    )
    error = error_of(csi.controller.ControllerModifyVolume, request)
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert f"is not on node {NODE_ID}" in (error.details() or "")
    assert not csi.pool.list_volumes()
