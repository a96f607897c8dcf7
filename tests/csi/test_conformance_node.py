"""Node RPCs on a real btrfs: bind mounts, the codes spec.md requires, idempotency, and the data path
(quota enforced at write, snapshots restore their bytes, expansion lets more in, read-only refuses)."""

import contextlib
import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import grpc
import pytest

from btrfs_core import filesystem, mounts, publish
from btrfs_core.pool import Pool
from csi.pb import csi_pb2
from tests.csi.conftest import NODE_ID, Client, MiB, Mode, code_of, mount_capability, serve, tree

pytestmark = pytest.mark.kernel
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
CHUNK = b"\xa5" * MiB


def write_until_refused(path: Path, limit_bytes: int) -> tuple[int, int | None]:
    """Writes 1 MiB chunks (fsync'd) until the kernel refuses or limit_bytes are in; (written, errno)."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while written < limit_bytes:
            written += os.write(fd, CHUNK)
            os.fsync(fd)
    except OSError as exc:
        return written, exc.errno
    finally:
        with contextlib.suppress(OSError):  # a delayed EDQUOT may surface at close too
            os.close(fd)
    return written, None


def publish_request(volume_id: str, target: Path, **fields: object) -> csi_pb2.NodePublishVolumeRequest:
    fields.setdefault("volume_capability", mount_capability())
    return csi_pb2.NodePublishVolumeRequest(volume_id=volume_id, target_path=str(target), **fields)  # type: ignore[arg-type]


def stats_request(volume_id: str, path: Path) -> csi_pb2.NodeGetVolumeStatsRequest:
    return csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=str(path))


def expand_request(volume_id: str, path: Path, required: int) -> csi_pb2.NodeExpandVolumeRequest:
    return csi_pb2.NodeExpandVolumeRequest(
        volume_id=volume_id,
        volume_path=str(path),
        capacity_range=csi_pb2.CapacityRange(required_bytes=required),
    )


# info and capabilities


def test_node_info_and_capabilities(kcsi: Client) -> None:
    info = kcsi.node.NodeGetInfo(csi_pb2.NodeGetInfoRequest())
    assert info.node_id == NODE_ID
    assert dict(info.accessible_topology.segments) == {"topology.btrfs.csi.dev/node": NODE_ID}
    assert info.max_volumes_per_node == 0
    RPC = csi_pb2.NodeServiceCapability.RPC
    caps = kcsi.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest()).capabilities
    assert {cap.rpc.type for cap in caps} == {
        RPC.GET_VOLUME_STATS,
        RPC.EXPAND_VOLUME,
        RPC.VOLUME_CONDITION,
        RPC.SINGLE_NODE_MULTI_WRITER,
    }


def test_stage_is_unimplemented(kcsi: Client, tmp_path: Path) -> None:
    staging = str(tmp_path / "staging")
    stage = csi_pb2.NodeStageVolumeRequest(volume_id="v", staging_target_path=staging)
    assert code_of(kcsi.node.NodeStageVolume, stage) == grpc.StatusCode.UNIMPLEMENTED
    unstage = csi_pb2.NodeUnstageVolumeRequest(volume_id="v", staging_target_path=staging)
    assert code_of(kcsi.node.NodeUnstageVolume, unstage) == grpc.StatusCode.UNIMPLEMENTED


# publish and unpublish


def test_publish_bind_mounts_the_volume_and_is_idempotent(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1")
    target = tmp_path / "pods" / "target"
    target.parent.mkdir()
    for _ in range(2):
        kcsi.node.NodePublishVolume(publish_request(volume.volume_id, target))
        mount = mounts.mount_at(target)
        assert mount is not None and mount.root == f"/volumes/{volume.volume_id}" and not mount.readonly
    assert mounts.published_targets(kcsi.pool.volume_path(volume.volume_id)) == [str(target)]
    (target / "hello").write_text("hi")
    assert (kcsi.pool.volume_path(volume.volume_id) / "hello").read_text() == "hi"
    for _ in range(2):
        kcsi.unpublish(volume.volume_id, target)
        assert mounts.mount_at(target) is None
        assert not target.exists()


def test_publish_requires_fields(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1")
    publish = kcsi.node.NodePublishVolume
    target = tmp_path / "t"
    assert code_of(publish, publish_request("", target)) == INVALID
    assert (
        code_of(
            publish,
            csi_pb2.NodePublishVolumeRequest(
                volume_id=volume.volume_id, volume_capability=mount_capability()
            ),
        )
        == INVALID
    )
    assert (
        code_of(
            publish, csi_pb2.NodePublishVolumeRequest(volume_id=volume.volume_id, target_path=str(target))
        )
        == INVALID
    )
    assert code_of(publish, publish_request(volume.volume_id, Path("relative/path"))) == INVALID
    no_mode = csi_pb2.VolumeCapability(mount=csi_pb2.VolumeCapability.MountVolume())
    assert code_of(publish, publish_request(volume.volume_id, target, volume_capability=no_mode)) == INVALID
    assert not target.exists()


def test_publish_unknown_volume_is_not_found(kcsi: Client, tmp_path: Path) -> None:
    assert (
        code_of(kcsi.node.NodePublishVolume, publish_request("no-such-volume", tmp_path / "t")) == NOT_FOUND
    )
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize(
    "capability",
    [
        csi_pb2.VolumeCapability(
            block=csi_pb2.VolumeCapability.BlockVolume(),
            access_mode=csi_pb2.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER),
        ),
        mount_capability(Mode.MULTI_NODE_MULTI_WRITER),
        mount_capability(fs_type="xfs"),
    ],
    ids=["block", "multi-node", "xfs"],
)
def test_publish_beyond_capabilities_is_failed_precondition(
    kcsi: Client, tmp_path: Path, capability: csi_pb2.VolumeCapability
) -> None:
    volume = kcsi.create_volume("pvc-1")
    request = publish_request(volume.volume_id, tmp_path / "t", volume_capability=capability)
    assert code_of(kcsi.node.NodePublishVolume, request) == grpc.StatusCode.FAILED_PRECONDITION


def test_publish_into_the_pool_is_invalid_and_touches_nothing(kcsi: Client) -> None:
    volume = kcsi.create_volume("pvc-1")
    other = kcsi.create_volume("pvc-2")
    root = kcsi.pool.root
    before = tree(root)
    for target in (
        root / "volumes" / other.volume_id,
        root / "volumes" / "new-dir",
        root / "snapshots" / "x" / ".." / "y",
        root,
        root.parent,
        Path("/"),
    ):
        code = code_of(kcsi.node.NodePublishVolume, publish_request(volume.volume_id, target))
        assert code == INVALID, target
    assert tree(root) == before
    assert mounts.published_targets(kcsi.pool.volume_path(volume.volume_id)) == []


def test_second_publish_at_the_same_target_with_other_arguments_is_already_exists(
    kcsi: Client, tmp_path: Path
) -> None:
    volume = kcsi.create_volume("pvc-1")
    other = kcsi.create_volume("pvc-2")
    target = tmp_path / "t"
    kcsi.publish(volume.volume_id, target)
    publish = kcsi.node.NodePublishVolume
    assert (
        code_of(publish, publish_request(volume.volume_id, target, readonly=True))
        == grpc.StatusCode.ALREADY_EXISTS
    )
    flags = mount_capability(mount_flags=["noexec"])
    assert (
        code_of(publish, publish_request(volume.volume_id, target, volume_capability=flags))
        == grpc.StatusCode.ALREADY_EXISTS
    )
    assert code_of(publish, publish_request(other.volume_id, target)) == grpc.StatusCode.ALREADY_EXISTS
    # the other volume's refused publish left this one in place, and unpublishing the wrong volume is refused
    assert mounts.mount_at(target).root == f"/volumes/{volume.volume_id}"  # type: ignore[union-attr]
    assert (
        code_of(
            kcsi.node.NodeUnpublishVolume,
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=other.volume_id, target_path=str(target)),
        )
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    kcsi.unpublish(volume.volume_id, target)


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        (Mode.SINGLE_NODE_WRITER, grpc.StatusCode.FAILED_PRECONDITION),
        (Mode.SINGLE_NODE_SINGLE_WRITER, grpc.StatusCode.FAILED_PRECONDITION),
        (Mode.SINGLE_NODE_READER_ONLY, grpc.StatusCode.FAILED_PRECONDITION),
        (Mode.SINGLE_NODE_MULTI_WRITER, grpc.StatusCode.OK),
    ],
)
def test_second_publish_at_another_target_follows_the_access_mode(
    kcsi: Client, tmp_path: Path, mode: int, code: grpc.StatusCode
) -> None:
    volume = kcsi.create_volume("pvc-1")
    capability = mount_capability(mode)
    kcsi.publish(volume.volume_id, tmp_path / "t1", capability=capability)
    request = publish_request(volume.volume_id, tmp_path / "t2", volume_capability=capability)
    assert code_of(kcsi.node.NodePublishVolume, request) == code
    for target in ("t1", "t2"):
        kcsi.unpublish(volume.volume_id, tmp_path / target)


def test_unpublish_errors(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1")
    unpublish = kcsi.node.NodeUnpublishVolume
    assert code_of(unpublish, csi_pb2.NodeUnpublishVolumeRequest(target_path=str(tmp_path))) == INVALID
    assert code_of(unpublish, csi_pb2.NodeUnpublishVolumeRequest(volume_id=volume.volume_id)) == INVALID
    request = csi_pb2.NodeUnpublishVolumeRequest(volume_id="no-such-volume", target_path=str(tmp_path / "t"))
    assert code_of(unpublish, request) == NOT_FOUND


def test_delete_of_a_published_volume_is_refused(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1")
    kcsi.publish(volume.volume_id, tmp_path / "t")
    request = csi_pb2.DeleteVolumeRequest(volume_id=volume.volume_id)
    assert code_of(kcsi.controller.DeleteVolume, request) == grpc.StatusCode.FAILED_PRECONDITION
    assert kcsi.pool.get_volume(volume.volume_id)
    kcsi.unpublish(volume.volume_id, tmp_path / "t")
    kcsi.controller.DeleteVolume(request)


# the data path


def test_writes_past_the_capacity_fail_with_edquot(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1", 16 * MiB)
    target = tmp_path / "t"
    kcsi.publish(volume.volume_id, target)
    written, error = write_until_refused(target / "fill", 64 * MiB)
    assert error == errno.EDQUOT
    assert 14 * MiB <= written <= 16 * MiB
    kcsi.unpublish(volume.volume_id, target)


def test_read_only_publish_refuses_writes(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1")
    (kcsi.pool.volume_path(volume.volume_id) / "data").write_text("kept")
    for name, kwargs in (
        ("flag", {"readonly": True}),
        ("mode", {"capability": mount_capability(Mode.SINGLE_NODE_READER_ONLY)}),
    ):
        target = tmp_path / name
        kcsi.publish(volume.volume_id, target, **kwargs)
        assert mounts.mount_at(target).readonly  # type: ignore[union-attr]
        assert (target / "data").read_text() == "kept"
        with pytest.raises(OSError) as refused:
            (target / "new").write_text("x")
        assert refused.value.errno == errno.EROFS
        kcsi.unpublish(volume.volume_id, target)


def test_mount_flags_reach_the_mount(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1")
    target = tmp_path / "t"
    kcsi.publish(
        volume.volume_id, target, capability=mount_capability(mount_flags=["nosuid", "nodev", "noexec"])
    )
    assert {"nosuid", "nodev", "noexec"} <= mounts.mount_at(target).options  # type: ignore[union-attr]
    kcsi.unpublish(volume.volume_id, target)


def test_restored_and_cloned_volumes_hold_the_source_bytes(kcsi: Client, tmp_path: Path) -> None:
    source = kcsi.create_volume("source", 32 * MiB)
    target = tmp_path / "source"
    kcsi.publish(source.volume_id, target)
    payload = os.urandom(3 * MiB)
    (target / "payload").write_bytes(payload)
    snapshot = kcsi.create_snapshot("snap", source.volume_id)
    (target / "payload").write_bytes(b"changed after the snapshot")
    restored = kcsi.create_volume(
        "restored",
        32 * MiB,
        volume_content_source=csi_pb2.VolumeContentSource(
            snapshot=csi_pb2.VolumeContentSource.SnapshotSource(snapshot_id=snapshot.snapshot_id)
        ),
    )
    clone = kcsi.create_volume(
        "clone",
        32 * MiB,
        volume_content_source=csi_pb2.VolumeContentSource(
            volume=csi_pb2.VolumeContentSource.VolumeSource(volume_id=source.volume_id)
        ),
    )
    kcsi.publish(restored.volume_id, tmp_path / "restored")
    kcsi.publish(clone.volume_id, tmp_path / "clone")
    assert (tmp_path / "restored" / "payload").read_bytes() == payload
    assert (tmp_path / "clone" / "payload").read_bytes() == b"changed after the snapshot"
    # each restore has its own limit, its own size: 32 MiB, not its source's nor none
    written, error = write_until_refused(tmp_path / "restored" / "more", 64 * MiB)
    assert error == errno.EDQUOT and written <= 32 * MiB
    for name, volume_id in (
        ("source", source.volume_id),
        ("restored", restored.volume_id),
        ("clone", clone.volume_id),
    ):
        kcsi.unpublish(volume_id, tmp_path / name)


def test_expansion_lets_more_bytes_in(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1", 8 * MiB)
    target = tmp_path / "t"
    kcsi.publish(volume.volume_id, target)
    _, error = write_until_refused(target / "a", 64 * MiB)
    assert error == errno.EDQUOT
    for _ in range(2):  # idempotent
        response = kcsi.node.NodeExpandVolume(expand_request(volume.volume_id, target, 32 * MiB))
        assert response.capacity_bytes == 32 * MiB
    more, error = write_until_refused(target / "b", 64 * MiB)
    assert error == errno.EDQUOT
    assert more >= 16 * MiB
    assert kcsi.pool.get_volume(volume.volume_id).capacity == 32 * MiB
    kcsi.unpublish(volume.volume_id, target)


def test_expand_errors(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1", 16 * MiB)
    other = kcsi.create_volume("pvc-2", 16 * MiB)
    target = tmp_path / "t"
    kcsi.publish(volume.volume_id, target)
    expand = kcsi.node.NodeExpandVolume
    assert code_of(expand, expand_request("", target, 32 * MiB)) == INVALID
    assert code_of(expand, csi_pb2.NodeExpandVolumeRequest(volume_id=volume.volume_id)) == INVALID
    assert code_of(expand, expand_request("no-such-volume", target, 32 * MiB)) == NOT_FOUND
    assert code_of(expand, expand_request(other.volume_id, target, 32 * MiB)) == NOT_FOUND  # not its mount
    assert code_of(expand, expand_request(volume.volume_id, tmp_path / "nowhere", 32 * MiB)) == NOT_FOUND
    # Smaller than it is: OK with the size it has (the spec's SHOULD); a limit below it is refused.
    assert expand(expand_request(volume.volume_id, target, 8 * MiB)).capacity_bytes == 16 * MiB
    shrink = csi_pb2.NodeExpandVolumeRequest(
        volume_id=volume.volume_id,
        volume_path=str(target),
        capacity_range=csi_pb2.CapacityRange(required_bytes=4 * MiB, limit_bytes=8 * MiB),
    )
    assert code_of(expand, shrink) == grpc.StatusCode.OUT_OF_RANGE
    assert code_of(expand, expand_request(volume.volume_id, target, -1)) == grpc.StatusCode.OUT_OF_RANGE
    block = csi_pb2.VolumeCapability(
        block=csi_pb2.VolumeCapability.BlockVolume(),
        access_mode=csi_pb2.VolumeCapability.AccessMode(mode=Mode.SINGLE_NODE_WRITER),
    )
    request = expand_request(volume.volume_id, target, 32 * MiB)
    request.volume_capability.CopyFrom(block)
    assert code_of(expand, request) == INVALID
    same = kcsi.node.NodeExpandVolume(expand_request(volume.volume_id, target, 16 * MiB))
    assert same.capacity_bytes == 16 * MiB
    unasked = kcsi.node.NodeExpandVolume(
        csi_pb2.NodeExpandVolumeRequest(volume_id=volume.volume_id, volume_path=str(target))
    )
    assert unasked.capacity_bytes == 16 * MiB
    assert kcsi.pool.get_volume(volume.volume_id).capacity == 16 * MiB
    kcsi.unpublish(volume.volume_id, target)


def test_volume_stats_report_the_qgroup(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1", 32 * MiB)
    target = tmp_path / "t"
    kcsi.publish(volume.volume_id, target)
    (target / "data").write_bytes(os.urandom(4 * MiB))
    filesystem.sync(kcsi.pool.root)  # qgroup counters move at transaction commit
    response = kcsi.node.NodeGetVolumeStats(stats_request(volume.volume_id, target))
    (usage,) = response.usage
    assert usage.unit == csi_pb2.VolumeUsage.BYTES
    assert usage.total == 32 * MiB
    assert 4 * MiB <= usage.used < 5 * MiB
    assert usage.available == usage.total - usage.used
    assert response.HasField("volume_condition") and not response.volume_condition.abnormal
    kcsi.unpublish(volume.volume_id, target)


def test_volume_stats_of_a_full_volume_are_abnormal(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1", 8 * MiB)
    target = tmp_path / "t"
    kcsi.publish(volume.volume_id, target)
    write_until_refused(target / "fill", 64 * MiB)
    filesystem.sync(kcsi.pool.root)
    response = kcsi.node.NodeGetVolumeStats(stats_request(volume.volume_id, target))
    assert response.usage[0].available >= 0
    assert response.volume_condition.abnormal and "full" in response.volume_condition.message
    kcsi.unpublish(volume.volume_id, target)


def test_volume_stats_errors(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1")
    other = kcsi.create_volume("pvc-2")
    target = tmp_path / "t"
    kcsi.publish(volume.volume_id, target)
    stats = kcsi.node.NodeGetVolumeStats
    assert code_of(stats, stats_request("", target)) == INVALID
    assert code_of(stats, csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume.volume_id)) == INVALID
    assert code_of(stats, stats_request("no-such-volume", target)) == NOT_FOUND
    assert code_of(stats, stats_request(other.volume_id, target)) == NOT_FOUND
    assert code_of(stats, stats_request(volume.volume_id, tmp_path)) == NOT_FOUND
    assert code_of(stats, stats_request(volume.volume_id, tmp_path / "missing")) == NOT_FOUND
    assert (
        code_of(stats, stats_request(volume.volume_id, kcsi.pool.volume_path(volume.volume_id))) == NOT_FOUND
    )
    assert code_of(stats, stats_request(volume.volume_id, target / "subdir")) == NOT_FOUND
    kcsi.unpublish(volume.volume_id, target)


# The spec's NOT_FOUND ("no such volume", "not at volume_path") comes before judging the path's form:
# csi-sanity asks with an unknown volume and with a known one, both at the relative path "some/path".


@pytest.mark.parametrize("rpc", ["NodeGetVolumeStats", "NodeExpandVolume"])
def test_unknown_volume_or_relative_path_is_not_found(kcsi: Client, tmp_path: Path, rpc: str) -> None:
    volume = kcsi.create_volume("pvc-1")
    target = tmp_path / "t"
    kcsi.publish(volume.volume_id, target)
    call = getattr(kcsi.node, rpc)

    def request(volume_id: str, path: str) -> object:
        if rpc == "NodeGetVolumeStats":
            return csi_pb2.NodeGetVolumeStatsRequest(volume_id=volume_id, volume_path=path)
        wanted = csi_pb2.CapacityRange(required_bytes=32 * MiB)
        return csi_pb2.NodeExpandVolumeRequest(volume_id=volume_id, volume_path=path, capacity_range=wanted)

    assert code_of(call, request("no-such-volume", "some/path")) == NOT_FOUND
    assert code_of(call, request("no-such-volume", "/a/../b")) == NOT_FOUND
    assert code_of(call, request(volume.volume_id, "some/path")) == NOT_FOUND
    # the target's own path without its leading "/": never resolved against the driver's working directory
    assert code_of(call, request(volume.volume_id, str(target).lstrip("/"))) == NOT_FOUND
    # Malformed input stays INVALID_ARGUMENT: a missing path always, a bad form for a known volume.
    assert code_of(call, request("no-such-volume", "")) == INVALID
    for bad in (f"{target}/../t", f"{target}\0", "/" + "x" * 5000):
        assert code_of(call, request(volume.volume_id, bad)) == INVALID
    assert kcsi.pool.get_volume(volume.volume_id).capacity == 16 * MiB
    kcsi.unpublish(volume.volume_id, target)


# what a publish lets the pod do on the node

NOBODY = 65534


def remount_pool(client: Client, options: str) -> None:
    """Changes the per-mount flags of the pool's own mount (what an operator's fstab would set)."""
    root = str(client.pool.root)
    subprocess.run(["mount", "-o", f"remount,bind,{options}", root, root], check=True, timeout=30)


@pytest.mark.parametrize(
    ("flags", "readonly"), [([], False), (["noatime"], False), ([], True)], ids=["none", "noatime", "ro"]
)
def test_publish_keeps_the_pool_mounts_restrictions(
    kcsi: Client, tmp_path: Path, flags: list[str], readonly: bool
) -> None:
    volume = kcsi.create_volume("pvc-1")
    remount_pool(kcsi, "noexec")
    target = tmp_path / "t"
    kcsi.publish(volume.volume_id, target, readonly, mount_capability(mount_flags=flags))
    mount = mounts.mount_at(target)
    assert mount is not None and mount.readonly is readonly
    assert {"noexec", "nosuid", "nodev", *flags} <= mount.options
    # The same publish again is the same mount; one that would lift a restriction is not.
    kcsi.publish(volume.volume_id, target, readonly, mount_capability(mount_flags=flags))
    kcsi.unpublish(volume.volume_id, target)


def test_a_setuid_binary_in_a_volume_gives_a_pod_no_privileges(kcsi: Client) -> None:
    volume = kcsi.create_volume("pvc-1")
    pods = Path(tempfile.mkdtemp(prefix="btrfs-csi-pod-"))  # pytest's tmp_path is closed to other uids
    try:
        pods.chmod(0o755)
        target = pods / "t"
        kcsi.publish(volume.volume_id, target)  # the pool's mount allows setuid: the publish must not
        binary = target / "id"
        id_command = shutil.which("id")
        assert id_command is not None
        shutil.copy(id_command, binary)  # root's, setuid: what a compromised pod could leave there
        binary.chmod(0o4755)
        os.chmod(target, 0o755)
        pod = subprocess.run(
            [str(binary), "-u"], user=NOBODY, group=NOBODY, extra_groups=[], capture_output=True, timeout=30
        )
        assert pod.returncode == 0, pod.stderr
        assert pod.stdout.decode().strip() == str(NOBODY)  # not 0: the setuid bit did not apply
        assert {"nosuid", "nodev"} <= mounts.mount_at(target).options  # type: ignore[union-attr]
        kcsi.unpublish(volume.volume_id, target)
    finally:
        shutil.rmtree(pods, ignore_errors=True)


def test_second_publish_with_fewer_flags_is_already_exists(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1")
    target = tmp_path / "t"
    kcsi.publish(volume.volume_id, target, capability=mount_capability(mount_flags=["noexec", "noatime"]))
    publish = kcsi.node.NodePublishVolume
    for flags in ([], ["noexec"], ["noatime"], ["noexec", "noatime", "nodiratime"]):
        request = publish_request(
            volume.volume_id, target, volume_capability=mount_capability(mount_flags=flags)
        )
        assert code_of(publish, request) == grpc.StatusCode.ALREADY_EXISTS, flags
    same = mount_capability(mount_flags=["noatime", "noexec", "nosuid"])  # nosuid: there anyway
    assert (
        code_of(publish, publish_request(volume.volume_id, target, volume_capability=same))
        == grpc.StatusCode.OK
    )
    kcsi.unpublish(volume.volume_id, target)
    kcsi.publish(volume.volume_id, target, readonly=True)
    assert code_of(publish, publish_request(volume.volume_id, target)) == grpc.StatusCode.ALREADY_EXISTS
    kcsi.unpublish(volume.volume_id, target)


def test_unpublish_removes_only_a_target_directory_it_made(kcsi: Client, tmp_path: Path) -> None:
    volume = kcsi.create_volume("pvc-1")
    made_by_the_co = tmp_path / "co"
    made_by_the_co.mkdir()
    kcsi.publish(volume.volume_id, made_by_the_co)
    kcsi.unpublish(volume.volume_id, made_by_the_co)
    assert made_by_the_co.is_dir() and mounts.mount_at(made_by_the_co) is None
    kcsi.unpublish(volume.volume_id, made_by_the_co)  # again: still OK, still there
    assert made_by_the_co.is_dir()
    made_by_the_driver = tmp_path / "driver"
    kcsi.publish(volume.volume_id, made_by_the_driver)
    # The mark is on the directory under the mount, not on the volume a pod can write to.
    assert publish.TARGET_MARKER not in os.listxattr(made_by_the_driver)
    kcsi.unpublish(volume.volume_id, made_by_the_driver)
    assert not made_by_the_driver.exists()
    assert sorted(os.listdir(tmp_path)) == ["co"]  # no temporary directory left behind


def test_the_target_mark_survives_a_restart(kcsi: Client, tmp_path: Path, socket_dir: Path) -> None:
    volume = kcsi.create_volume("pvc-1")
    target = tmp_path / "t"
    kcsi.publish(volume.volume_id, target)
    assert kcsi.driver is not None
    kcsi.driver.stop(0)
    # A new driver process knows nothing of the last one's publishes: the mark on the directory tells.
    (socket_dir / "again").mkdir()
    with contextlib.contextmanager(serve)(Pool.open(kcsi.pool.root), socket_dir / "again") as again:
        again.unpublish(volume.volume_id, target)
    assert not target.exists()
