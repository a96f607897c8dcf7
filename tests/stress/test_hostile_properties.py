"""Hostile input against a live `btrfs-csi serve` process: whole requests drawn by hypothesis (names, IDs,
parameters, capacity ranges, capabilities, topology, content sources, target paths through symlinks and
into the pool, page tokens), and messages larger than the server accepts.

Every answer carries one of the codes the spec allows for that RPC: never UNKNOWN or INTERNAL, and the
driver's log never shows a traceback. Nothing changes outside the pool and the given target: the pool's
tree and a sandbox of directories, files and symlinks are compared before and after each input (a
successful publish is undone by an unpublish, which must leave the sandbox as it was, less the target).

tests/csi/test_hostile.py covers single fields in-process (fake and kernel pools); this suite draws
whole requests and sends them to the served driver.
"""

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from csi.pb import csi_pb2
from tests.conftest import kernel_skip_reason
from tests.csi.conftest import MiB, mount_capability, tree
from tests.csi.test_hostile import ANY_TEXT, HOSTILE_IDS, SAFE_ID
from tests.stress.harness import RPC_TIMEOUT, ServedDriver, count, scaled
from tests.support import loop_pool

pytestmark = pytest.mark.kernel

C = grpc.StatusCode
PROPERTY = settings(
    max_examples=scaled(60, 1500),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
NEVER = {C.UNKNOWN, C.INTERNAL}
MAX_SERVER_MESSAGE = 4 << 20


class Live:
    """The served driver with a populated pool and a sandbox of paths a request may point at."""

    def __init__(self, mount: Path, driver: ServedDriver, sandbox: Path) -> None:
        self.mount, self.driver, self.sandbox = mount, driver, sandbox
        self.client = driver.client()
        self.published = sandbox / "published"

    def reset(self) -> None:
        """The sandbox's directories and files again (an unpublish may remove an empty target)."""
        (self.sandbox / "a" / "b").mkdir(parents=True, exist_ok=True)
        (self.sandbox / "empty").mkdir(exist_ok=True)
        (self.sandbox / "a" / "file").write_text("keep")
        (self.sandbox / "top-file").write_text("keep")

    def code(self, call: Callable[..., Any], request: Any) -> tuple[grpc.StatusCode, Any]:
        try:
            return C.OK, call(request, timeout=RPC_TIMEOUT)
        except grpc.RpcError as exc:
            return exc.code(), exc.details()


def sandbox_listing(root: Path) -> dict[str, str]:
    """Every path under root (symlinks not followed, mount points included): its kind and link target."""
    found = {}
    for directory, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(directory) / name
            kind = "link:" + os.readlink(path) if path.is_symlink() else ("dir" if path.is_dir() else "file")
            found[str(path.relative_to(root))] = kind
    return found


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    sandbox = Path(tempfile.mkdtemp(prefix="csi-sandbox-"))
    with loop_pool(prefix="btrfs-csi-hostile-") as mount, ServedDriver(mount, log_level="DEBUG") as driver:
        driver.start()
        driver.wait_ready()
        state = Live(mount, driver, sandbox)
        try:
            state.client.create_volume("victim", 4 * MiB)
            state.client.create_snapshot("victim-snap", "victim")
            state.client.create_volume("pub", 8 * MiB)
            state.client.publish("pub", state.published)
            state.reset()
            for name, points_to in {
                "to-pool": mount,
                "to-volumes": mount / "volumes",
                "to-victim": mount / "volumes" / "victim",
                "to-staging": mount / ".staging",
                "to-a": sandbox / "a",
                "dangling": sandbox / "nowhere",
                "relative-link": Path("a/b"),
            }.items():
                (sandbox / name).symlink_to(points_to)
            yield state
            logs = driver.log_text()
            assert "Traceback" not in logs, logs[-5000:]
            for code in NEVER:
                assert f'"code": "{code.name}"' not in logs
        finally:
            for line in reversed(Path("/proc/self/mounts").read_text().splitlines()):
                point = line.split()[1]
                if point.startswith(str(sandbox)):
                    subprocess.run(["umount", "--lazy", point], check=False, timeout=60)
            subprocess.run(["rm", "-rf", "--one-file-system", str(sandbox)], check=False, timeout=60)


# strategies

COMPONENTS = st.sampled_from(
    [
        "a", "b", "empty", "file", "top-file", "to-pool", "to-volumes", "to-victim", "to-staging", "to-a",
        "dangling", "relative-link", "published", "new", "new2", "..", ".", "", "x" * 300, "é", "sp ace",
        "\n", "\0",
    ]
)  # fmt: skip
PREFIXES = st.sampled_from(["sandbox", "pool", "pool/volumes", "pool/snapshots/victim-snap", "relative"])
IDS = st.one_of(st.sampled_from(["victim", "pub", "victim-snap", "missing"]), ANY_TEXT)
VOLUME_TO_PUBLISH = st.one_of(st.just("victim"), IDS)
Mode = csi_pb2.VolumeCapability.AccessMode.Mode
CAPABILITIES = st.builds(
    lambda mode, block, fs_type, flags, group: csi_pb2.VolumeCapability(
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=mode),
        **(
            {"block": csi_pb2.VolumeCapability.BlockVolume()}
            if block
            else {
                "mount": csi_pb2.VolumeCapability.MountVolume(
                    fs_type=fs_type, mount_flags=flags, volume_mount_group=group
                )
            }
        ),
    ),
    st.one_of(st.sampled_from(list(Mode.values())), st.integers(-5, 40)),
    st.booleans(),
    st.sampled_from(["", "btrfs", "ext4", "../x"]),
    st.lists(
        st.sampled_from(["ro", "rw", "nosuid", "noexec", "bind", "remount", "x" * 5000, "secret=1"]),
        max_size=4,
    ),
    st.sampled_from(["", "1000"]),
)
PARAMETERS = st.dictionaries(
    st.one_of(
        st.sampled_from(
            [
                "csi.storage.k8s.io/pvc/name",
                "csi.storage.k8s.io/pvc/namespace",
                "csi.storage.k8s.io/pv/name",
                "csi.storage.k8s.io/other",
                "unknown",
                "",
            ]
        ),
        st.text(max_size=40),
    ),
    st.one_of(st.text(max_size=100), st.sampled_from(["x" * 5000, "../../etc", "\0"])),
    max_size=4,
)
INT64 = st.integers(-(1 << 63), (1 << 63) - 1)
CAPACITY = st.one_of(
    st.none(),
    st.builds(
        csi_pb2.CapacityRange,
        required_bytes=st.one_of(INT64, st.sampled_from([0, MiB, 4 * MiB, 1 << 40])),
        limit_bytes=st.one_of(INT64, st.sampled_from([0, MiB, 8 * MiB])),
    ),
)
TOPOLOGY = st.one_of(
    st.none(),
    st.builds(
        lambda segments: csi_pb2.TopologyRequirement(
            requisite=[csi_pb2.Topology(segments=s) for s in segments]
        ),
        st.lists(
            st.dictionaries(
                st.sampled_from(["topology.btrfs.csi.dev/node", "zone", ""]),
                st.sampled_from(["node-1", "node-2", ""]),
            ),
            max_size=2,
        ),
    ),
)


def source_strategy() -> st.SearchStrategy[csi_pb2.VolumeContentSource | None]:
    return st.one_of(
        st.none(),
        IDS.map(
            lambda i: csi_pb2.VolumeContentSource(
                snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=i)
            )
        ),
        IDS.map(
            lambda i: csi_pb2.VolumeContentSource(
                volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=i)
            )
        ),
        st.just(csi_pb2.VolumeContentSource()),
    )


def target_path(live: Live, prefix: str, parts: list[str]) -> str:
    base = {
        "sandbox": str(live.sandbox),
        "pool": str(live.mount),
        "pool/volumes": str(live.mount / "volumes"),
        "pool/snapshots/victim-snap": str(live.mount / "snapshots" / "victim-snap"),
        "relative": "relative-dir",
    }[prefix]
    return "/".join([base, *parts])


def within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def place_of(target: str) -> str:
    """Where a target path is: its parent with symlinks resolved, and its own last component as given.

    The only place a publish or unpublish may change: a symlink at the target is not followed.
    """
    parent, name = os.path.split(target)
    return os.path.normpath(os.path.join(os.path.realpath(parent), name))


def unchanged(live: Live, before_pool: list[str], before_sandbox: dict[str, str], target: str | None) -> None:
    """The pool is as it was; the sandbox too, except at or below the target's place."""
    pool = tree(live.mount)
    assert pool == before_pool, (target, sorted(set(pool) ^ set(before_pool)))
    after = sandbox_listing(live.sandbox)
    changed = {p for p in set(after) | set(before_sandbox) if after.get(p) != before_sandbox.get(p)}
    if target is not None:
        changed = {p for p in changed if not within(str(live.sandbox / p), place_of(target))}
    assert not changed, (target, changed)


# node: target paths

NODE_CODES = {
    "NodePublishVolume": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.ALREADY_EXISTS, C.FAILED_PRECONDITION},
    "NodeUnpublishVolume": {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.FAILED_PRECONDITION},
    "NodeGetVolumeStats": {C.INVALID_ARGUMENT, C.NOT_FOUND},
    "NodeExpandVolume": {C.INVALID_ARGUMENT, C.NOT_FOUND, C.OUT_OF_RANGE},
}


def check_publish(
    live: Live, volume_id: str, target: str, capability: Any = None, readonly: bool = False
) -> None:
    """Publishes anywhere: a refusal changes nothing; a success mounts exactly at the target's place
    (never in the pool), and its unpublish leaves the sandbox as it was, less the target."""
    live.reset()
    before_pool, before_sandbox = tree(live.mount), sandbox_listing(live.sandbox)
    request = csi_pb2.NodePublishVolumeRequest(volume_id=volume_id, target_path=target, readonly=readonly)
    request.volume_capability.CopyFrom(capability or mount_capability())
    code, details = live.code(live.client.node.NodePublishVolume, request)
    count("hostile inputs tried (live server)")
    assert code in NODE_CODES["NodePublishVolume"], (target, code, details)
    if "\0" in target:
        assert code is C.INVALID_ARGUMENT
        unchanged(live, before_pool, before_sandbox, None)
        return
    place = place_of(target)
    if code is C.OK and place != str(live.published):
        assert within(place, str(live.sandbox)) and os.path.ismount(place), (target, place)
        assert tree(live.mount) == before_pool, f"publishing at {target} changed the pool"
        unpublish = csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=target)
        code, details = live.code(live.client.node.NodeUnpublishVolume, unpublish)
        assert code in (C.OK, C.FAILED_PRECONDITION), (target, code, details)
        assert not os.path.ismount(place), target
    unchanged(live, before_pool, before_sandbox, target if code is C.OK else None)


def check_node_calls(live: Live, volume_id: str, path: str, required: int = 2 * MiB) -> None:
    """Stats and expand at any path change nothing; unpublish at most removes an empty directory there."""
    live.reset()
    if volume_id == "pub" or ("\0" not in path and place_of(path) == str(live.published)):
        return  # the published volume's own mount stays (its publish is checked elsewhere)
    before_pool, before_sandbox = tree(live.mount), sandbox_listing(live.sandbox)
    node = live.client.node
    for method, request in (
        ("NodeGetVolumeStats", csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path)),
        (
            "NodeExpandVolume",
            csi_pb2.NodeExpandVolumeRequest(
                volume_id=volume_id,
                volume_path=path,
                capacity_range=csi_pb2.CapacityRange(required_bytes=required),
            ),
        ),
        ("NodeUnpublishVolume", csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=path)),
    ):
        code, details = live.code(getattr(node, method), request)
        count("hostile inputs tried (live server)")
        assert code in NODE_CODES[method], (method, path, code, details)
        target = path if method == "NodeUnpublishVolume" and code is C.OK else None
        unchanged(live, before_pool, before_sandbox, target)


PREFIX_NAMES = ["sandbox", "pool", "pool/volumes", "pool/snapshots/victim-snap", "relative"]
COMPONENT_NAMES = [
    "a", "b", "empty", "file", "top-file", "to-pool", "to-volumes", "to-victim", "to-staging", "to-a",
    "dangling", "relative-link", "published", "new", "..", ".", "", "x" * 300, "é", "sp ace", "\n", "\0",
]  # fmt: skip
PAIRED = ["a", "file", "to-a", "to-volumes", "dangling", "published", "new", ".", "", "x" * 300]


def every_path(live: Live) -> list[str]:
    """Each prefix with each component, and the sandbox with each pair of the telling components."""
    paths = [target_path(live, prefix, [part]) for prefix in PREFIX_NAMES for part in COMPONENT_NAMES]
    paths += [target_path(live, "sandbox", [first, second]) for first in PAIRED for second in PAIRED]
    return paths


def test_publish_at_every_kind_of_path(live: Live) -> None:
    for target in every_path(live):
        check_publish(live, "victim", target)


def test_unpublish_stats_and_expand_at_every_kind_of_path(live: Live) -> None:
    for path in every_path(live):
        check_node_calls(live, "victim", path)


@PROPERTY
@given(
    volume_id=VOLUME_TO_PUBLISH,
    prefix=PREFIXES,
    parts=st.lists(COMPONENTS, max_size=4),
    capability=st.one_of(st.none(), CAPABILITIES),
    readonly=st.booleans(),
)
def test_publish_anywhere_changes_only_the_target(
    live: Live, volume_id: str, prefix: str, parts: list[str], capability: Any, readonly: bool
) -> None:
    check_publish(live, volume_id, target_path(live, prefix, parts), capability, readonly)


@PROPERTY
@given(volume_id=IDS, prefix=PREFIXES, parts=st.lists(COMPONENTS, max_size=4), required=INT64)
def test_unpublish_stats_and_expand_anywhere_change_nothing(
    live: Live, volume_id: str, prefix: str, parts: list[str], required: int
) -> None:
    check_node_calls(live, volume_id, target_path(live, prefix, parts), required)


# controller: whole requests


@PROPERTY
@given(
    name=st.one_of(ANY_TEXT, st.sampled_from(["victim", "pub", "fresh"])),
    capacity=CAPACITY,
    capabilities=st.lists(CAPABILITIES, max_size=2),
    parameters=PARAMETERS,
    source=source_strategy(),
    topology=TOPOLOGY,
    secrets=st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=2),
)
def test_any_create_request_is_answered_by_the_spec(
    live: Live,
    name: str,
    capacity: Any,
    capabilities: list[Any],
    parameters: dict[str, str],
    source: Any,
    topology: Any,
    secrets: dict[str, str],
) -> None:
    before_pool, before_sandbox = tree(live.mount), sandbox_listing(live.sandbox)
    request = csi_pb2.CreateVolumeRequest(
        name=name, volume_capabilities=capabilities, parameters=parameters, secrets=secrets
    )
    for field, value in (
        ("capacity_range", capacity),
        ("volume_content_source", source),
        ("accessibility_requirements", topology),
    ):
        if value is not None:
            getattr(request, field).CopyFrom(value)
    code, response = live.code(live.client.controller.CreateVolume, request)
    count("hostile inputs tried (live server)")
    allowed = {C.OK, C.INVALID_ARGUMENT, C.OUT_OF_RANGE, C.RESOURCE_EXHAUSTED, C.ALREADY_EXISTS, C.NOT_FOUND}
    assert code in allowed, (code, response)
    if code is C.OK:
        volume_id = response.volume.volume_id
        assert SAFE_ID.fullmatch(volume_id)
        if volume_id not in ("victim", "pub"):
            mine = f"volumes/{volume_id}"
            assert all(
                p == mine or p.startswith(mine + "/") for p in set(tree(live.mount)) - set(before_pool)
            )
            delete = csi_pb2.DeleteVolumeRequest(volume_id=volume_id)
            assert live.code(live.client.controller.DeleteVolume, delete)[0] is C.OK
    unchanged(live, before_pool, before_sandbox, None)


@PROPERTY
@given(
    kind=st.sampled_from(
        ["CreateSnapshot", "DeleteSnapshot", "DeleteVolume", "ValidateVolumeCapabilities", "GetCapacity"]
    ),
    name=ANY_TEXT,
    object_id=IDS,
    parameters=PARAMETERS,
    capabilities=st.lists(CAPABILITIES, max_size=2),
)
def test_any_snapshot_delete_or_validate_request_is_answered_by_the_spec(
    live: Live, kind: str, name: str, object_id: str, parameters: dict[str, str], capabilities: list[Any]
) -> None:
    if kind.startswith("Delete") and object_id in ("victim", "pub", "victim-snap"):
        object_id = "missing"
    before_pool, before_sandbox = tree(live.mount), sandbox_listing(live.sandbox)
    c = live.client.controller
    table: dict[str, tuple[Callable[..., Any], Any, set[grpc.StatusCode]]] = {
        "CreateSnapshot": (
            c.CreateSnapshot,
            csi_pb2.CreateSnapshotRequest(name=name, source_volume_id=object_id, parameters=parameters),
            {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND, C.ALREADY_EXISTS},
        ),
        "DeleteSnapshot": (
            c.DeleteSnapshot,
            csi_pb2.DeleteSnapshotRequest(snapshot_id=object_id),
            {C.OK, C.INVALID_ARGUMENT},
        ),
        "DeleteVolume": (
            c.DeleteVolume,
            csi_pb2.DeleteVolumeRequest(volume_id=object_id),
            {C.OK, C.INVALID_ARGUMENT},
        ),
        "ValidateVolumeCapabilities": (
            c.ValidateVolumeCapabilities,
            csi_pb2.ValidateVolumeCapabilitiesRequest(
                volume_id=object_id, volume_capabilities=capabilities, parameters=parameters
            ),
            {C.OK, C.INVALID_ARGUMENT, C.NOT_FOUND},
        ),
        "GetCapacity": (
            c.GetCapacity,
            csi_pb2.GetCapacityRequest(volume_capabilities=capabilities, parameters=parameters),
            {C.OK, C.INVALID_ARGUMENT},
        ),
    }
    call, request, allowed = table[kind]
    code, response = live.code(call, request)
    count("hostile inputs tried (live server)")
    assert code in allowed, (kind, code, response)
    if kind == "CreateSnapshot" and code is C.OK:
        snapshot_id = response.snapshot.snapshot_id
        assert SAFE_ID.fullmatch(snapshot_id)
        if snapshot_id != "victim-snap":
            delete = csi_pb2.DeleteSnapshotRequest(snapshot_id=snapshot_id)
            assert live.code(c.DeleteSnapshot, delete)[0] is C.OK
    unchanged(live, before_pool, before_sandbox, None)


TOKENS = st.one_of(
    st.just(""),
    ANY_TEXT,
    ANY_TEXT.map(lambda t: "after:" + t),
    st.sampled_from(["after:victim", "after:pub", "after:victim-snap", "after:zzz", "after:", "after:../x"]),
)


@PROPERTY
@given(
    token=TOKENS,
    max_entries=st.integers(-(1 << 31), (1 << 31) - 1),
    snapshot_id=st.one_of(st.just(""), IDS),
    source_volume_id=st.one_of(st.just(""), IDS),
)
def test_any_page_token_is_a_page_or_aborted(
    live: Live, token: str, max_entries: int, snapshot_id: str, source_volume_id: str
) -> None:
    c = live.client.controller
    volumes = csi_pb2.ListVolumesRequest(starting_token=token, max_entries=max_entries)
    snapshots = csi_pb2.ListSnapshotsRequest(
        starting_token=token,
        max_entries=max_entries,
        snapshot_id=snapshot_id,
        source_volume_id=source_volume_id,
    )
    for call, request in ((c.ListVolumes, volumes), (c.ListSnapshots, snapshots)):
        code, response = live.code(call, request)
        count("hostile inputs tried (live server)")
        assert code in {C.OK, C.ABORTED, C.INVALID_ARGUMENT}, (token, max_entries, code, response)
        if max_entries < 0:
            assert code is C.INVALID_ARGUMENT
        if code is C.OK:
            assert max_entries == 0 or len(response.entries) <= max_entries
            after = token[len("after:") :]
            ids = [
                e.volume.volume_id if call is c.ListVolumes else e.snapshot.snapshot_id
                for e in response.entries
            ]
            assert all(i > after for i in ids), (token, ids)


# messages larger than the server takes


@pytest.mark.parametrize(
    "field",
    ["name", "secrets", "parameters", "target_path", "mount_flags"],
)
def test_oversized_messages_are_refused_as_resource_exhausted(live: Live, field: str) -> None:
    huge = "x" * (MAX_SERVER_MESSAGE + 1024)
    c, n = live.client.controller, live.client.node
    call: Callable[..., Any]
    request: Any
    if field == "target_path":
        call, request = (
            n.NodePublishVolume,
            csi_pb2.NodePublishVolumeRequest(volume_id="victim", target_path=huge),
        )
    elif field == "mount_flags":
        call = n.NodePublishVolume
        request = csi_pb2.NodePublishVolumeRequest(volume_id="victim", target_path=str(live.sandbox / "big"))
        request.volume_capability.mount.mount_flags.extend(["y" * (1 << 20)] * 5)
    else:
        call, request = c.CreateVolume, csi_pb2.CreateVolumeRequest(name="big")
        if field == "name":
            request.name = huge
        else:
            getattr(request, field)["k"] = huge
    before_pool, before_sandbox = tree(live.mount), sandbox_listing(live.sandbox)
    code, details = live.code(call, request)
    count("hostile inputs tried (live server)")
    assert code is C.RESOURCE_EXHAUSTED, (code, details)
    assert live.client.identity.Probe(csi_pb2.ProbeRequest(), timeout=RPC_TIMEOUT).ready.value
    unchanged(live, before_pool, before_sandbox, None)


def test_hostile_ids_of_the_unit_suite_are_refused_by_the_served_driver_too(live: Live) -> None:
    for bad in HOSTILE_IDS:
        request = csi_pb2.ControllerGetVolumeRequest(volume_id=bad)
        assert live.code(live.client.controller.ControllerGetVolume, request)[0] is C.INVALID_ARGUMENT
        count("hostile inputs tried (live server)")
