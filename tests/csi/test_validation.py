"""Request validation and pagination: pure logic, no root."""

import grpc
import pytest

from btrfs_core.models import Source, SourceKind
from csi import validation as v
from csi.errors import CsiError
from csi.pb import csi_pb2
from tests.csi.conftest import MiB, Mode, mount_capability

TOPOLOGY = {"topology.btrfs.csi.dev/node": "node-1"}


def code(exc: pytest.ExceptionInfo[CsiError]) -> grpc.StatusCode:
    return exc.value.code


@pytest.mark.parametrize("value", ["pvc-1", "a", "h-" + "0" * 40, "x" * 128, "A.b_c-9"])
def test_ids_the_core_issues_pass(value: str) -> None:
    assert v.required_id(value, "volume_id") == value


@pytest.mark.parametrize(
    "value",
    ["..", ".", "../x", "a/b", "/abs", "a\0b", "x" * 129, "-lead", "sp ace", "é", "a\nb", "x" * 10240],
)
def test_malformed_ids_are_invalid_and_named(value: str) -> None:
    with pytest.raises(CsiError) as exc:
        v.required_id(value, "volume_id")
    assert code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert exc.value.message.startswith("volume_id ")
    assert len(exc.value.message) < 200  # a 10 KiB value is not echoed back whole


def test_empty_id_is_required() -> None:
    with pytest.raises(CsiError, match="snapshot_id is required"):
        v.required_id("", "snapshot_id", "snapshot")


@pytest.mark.parametrize("value", ["pvc-1", "My Volume ünïcødé", "tab\there", "x" * 128, "../../etc/passwd"])
def test_names_any_unicode_within_limits(value: str) -> None:
    assert v.required_name(value) == value


@pytest.mark.parametrize("value", ["", "x" * 129, "é" * 65, "nul\0", "bell\x07", "del\x7f", "c1\x85"])
def test_names_refused(value: str) -> None:
    with pytest.raises(CsiError) as exc:
        v.required_name(value)
    assert code(exc) == grpc.StatusCode.INVALID_ARGUMENT and "name" in exc.value.message


@pytest.mark.parametrize("value", ["/var/lib/kubelet/pods/x/volumes/t", "/t"])
def test_paths(value: str) -> None:
    assert v.required_path(value, "target_path") == value


@pytest.mark.parametrize("value", ["", "relative", "/a/../b", "/a/..", "/nul\0", "/" + "x" * 5000])
def test_bad_paths(value: str) -> None:
    with pytest.raises(CsiError) as exc:
        v.required_path(value, "target_path")
    assert code(exc) == grpc.StatusCode.INVALID_ARGUMENT and "target_path" in exc.value.message


def test_well_formed_paths_may_be_relative() -> None:
    # relative: no volume is published there (NOT_FOUND is the mount check's), not a malformed request
    assert v.well_formed_path("some/path", "volume_path") == "some/path"
    for bad in ("", "a/../b", "/nul\0", "/" + "x" * 5000):
        with pytest.raises(CsiError) as exc:
            v.well_formed_path(bad, "volume_path")
        assert code(exc) == grpc.StatusCode.INVALID_ARGUMENT and "volume_path" in exc.value.message


# capacity


def rng(required: int = 0, limit: int = 0) -> csi_pb2.CapacityRange:
    return csi_pb2.CapacityRange(required_bytes=required, limit_bytes=limit)


@pytest.mark.parametrize(
    ("capacity_range", "expected"),
    [(None, (0, 0)), (rng(), (0, 0)), (rng(10 * MiB), (10 * MiB, 0)), (rng(1, 20 * MiB), (1, 20 * MiB))],
)
def test_capacity_bounds_are_the_range_as_sent(
    capacity_range: csi_pb2.CapacityRange | None, expected: tuple[int, int]
) -> None:
    assert v.capacity_bounds(capacity_range) == expected  # the core picks the capacity (tests/core)


@pytest.mark.parametrize("capacity_range", [rng(-1), rng(0, -1), rng(-5, -5), rng(2 * MiB, MiB)])
def test_malformed_capacity_range_is_out_of_range(capacity_range: csi_pb2.CapacityRange) -> None:
    with pytest.raises(CsiError) as exc:
        v.capacity_bounds(capacity_range)
    assert code(exc) == grpc.StatusCode.OUT_OF_RANGE and "capacity_range" in exc.value.message


def test_expansion_capacity() -> None:
    assert v.expansion_capacity(None) is None
    assert v.expansion_capacity(rng()) is None
    assert v.expansion_capacity(rng(5)) == (5, None)
    assert v.expansion_capacity(rng(0, 7)) == (7, 7)
    assert v.expansion_capacity(rng(5, 7)) == (5, 7)
    with pytest.raises(CsiError):
        v.expansion_capacity(rng(-1))


# capabilities


def test_capability_properties() -> None:
    reader = v.capability(mount_capability(Mode.SINGLE_NODE_READER_ONLY), "c")
    assert reader.readonly and reader.exclusive and reader.unsupported() is None
    shared = v.capability(mount_capability(Mode.SINGLE_NODE_MULTI_WRITER, mount_flags=["ro", "noatime"]), "c")
    assert shared.readonly and not shared.exclusive and shared.options == ("noatime",)
    assert v.capability(mount_capability(Mode.SINGLE_NODE_WRITER), "c").exclusive


@pytest.mark.parametrize(
    ("cap", "words"),
    [
        (csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume()), "access_mode"),
        (mount_capability(Mode.UNKNOWN), "access_mode"),
        (mount_capability(99), "access mode"),
        (
            csi_pb2.VolumeCapability(
                access_mode=csi_pb2.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER)
            ),
            "access_type",
        ),
    ],
)
def test_malformed_capabilities(cap: csi_pb2.VolumeCapability, words: str) -> None:
    with pytest.raises(CsiError) as exc:
        v.capability(cap, "volume_capability")
    assert code(exc) == grpc.StatusCode.INVALID_ARGUMENT and words in exc.value.message


def test_unsupported_mount_flags_are_not_echoed() -> None:
    cap = v.capability(mount_capability(mount_flags=["password=hunter2"]), "c")
    reason = cap.unsupported()
    assert reason is not None and "hunter2" not in reason and "mount_flags[0]" in reason


def test_capabilities_required_and_each_checked() -> None:
    with pytest.raises(CsiError, match="volume_capabilities is required"):
        v.capabilities([])
    with pytest.raises(CsiError, match=r"volume_capabilities\[1\]"):
        v.supported_capabilities([mount_capability(), mount_capability(Mode.MULTI_NODE_MULTI_WRITER)])


# parameters, sources, topology


def test_parameters() -> None:
    sidecar = {
        "csi.storage.k8s.io/pvc/name": "a",
        "csi.storage.k8s.io/pv/name": "b",
        "csi.storage.k8s.io/x": "c",
    }
    assert v.parameters(sidecar, frozenset()) == sidecar
    assert v.volume_metadata(sidecar) == {
        "csi.storage.k8s.io/pvc/name": "a",
        "csi.storage.k8s.io/pv/name": "b",
    }
    with pytest.raises(CsiError, match="unknown key 'fs'"):
        v.parameters({"fs": "btrfs"}, frozenset())
    with pytest.raises(CsiError, match="exceed 4096 bytes"):
        v.parameters({"csi.storage.k8s.io/pvc/name": "x" * 5000}, frozenset())


def test_content_source() -> None:
    snap = csi_pb2.VolumeContentSource(snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id="s-1"))
    assert v.content_source(snap) == Source(SourceKind.SNAPSHOT, "s-1")
    vol = csi_pb2.VolumeContentSource(volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id="v-1"))
    assert v.content_source(vol) == Source(SourceKind.VOLUME, "v-1")
    with pytest.raises(CsiError, match="snapshot or volume"):
        v.content_source(csi_pb2.VolumeContentSource())


def test_topology_requirement() -> None:
    ours = csi_pb2.Topology(segments=TOPOLOGY)
    other = csi_pb2.Topology(segments={"topology.btrfs.csi.dev/node": "node-2"})
    v.check_accessible(None, TOPOLOGY, "r")
    v.check_accessible(csi_pb2.TopologyRequirement(requisite=[other, ours]), TOPOLOGY, "r")
    v.check_accessible(csi_pb2.TopologyRequirement(preferred=[ours]), TOPOLOGY, "r")
    with pytest.raises(CsiError) as exc:
        v.check_accessible(csi_pb2.TopologyRequirement(requisite=[other]), TOPOLOGY, "r")
    assert code(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert v.topology_matches(None, TOPOLOGY) and v.topology_matches(ours, TOPOLOGY)
    assert not v.topology_matches(other, TOPOLOGY)
    assert not v.topology_matches(csi_pb2.Topology(segments={**TOPOLOGY, "zone": "z"}), TOPOLOGY)


# pagination


def test_tokens_round_trip_and_foreign_tokens_abort() -> None:
    assert v.parse_page_token("", "volume") is None
    assert v.parse_page_token(v.page_token("pvc-7"), "volume") == "pvc-7"
    for token in ("invalid-token", "pvc-7", "after:", "after:../x", "after:a/b", "after:" + "x" * 200):
        with pytest.raises(CsiError) as exc:
            v.parse_page_token(token, "volume")
        assert code(exc) == grpc.StatusCode.ABORTED


def test_max_entries() -> None:
    assert v.max_entries(0) == 0
    with pytest.raises(CsiError) as exc:
        v.max_entries(-1)
    assert code(exc) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 7, 8, 100])
def test_paginate_walks_everything_once(limit: int) -> None:
    items = [f"id-{i}" for i in (5, 1, 7, 3, 2, 6, 4)]
    seen: list[str] = []
    after = None
    while True:
        page, token = v.paginate(items, str, limit, after)
        assert not limit or len(page) <= limit
        seen += page
        if not token:
            break
        after = v.parse_page_token(token, "volume")
    assert seen == sorted(items)


def test_paginate_resumes_after_a_deleted_entry() -> None:
    page, token = v.paginate(["a", "b", "c"], str, 1, None)
    assert page == ["a"]
    assert v.paginate(["b", "c"], str, 0, v.parse_page_token(token, "volume")) == (["b", "c"], "")
