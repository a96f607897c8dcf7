"""btrfs_core.subvolume on the real kernel, checked against `btrfs subvolume show/list` and
`btrfs property`."""

import ctypes
import errno
import os
from pathlib import Path

import pytest

from btrfs_core import ioctl, subvolume
from btrfs_core.errors import AlreadyExists, InvalidArgument, KernelError, NotFound

from .oracle import (
    cli_time,
    hash_tree,
    property_ro,
    settle,
    subvolume_list,
    subvolume_paths,
    subvolume_show,
    write_random,
)

pytestmark = pytest.mark.kernel


def _check_info_against_cli(path: Path, readonly: bool) -> None:
    info = subvolume.info(path)
    shown = subvolume_show(path)
    assert info.name == shown["Name"] == path.name
    assert info.id == int(shown["Subvolume ID"]) == subvolume.subvolume_id(path)
    assert str(info.uuid) == shown["UUID"]
    assert (str(info.parent_uuid) if info.parent_uuid else "-") == shown["Parent UUID"]
    assert info.parent_id == int(shown["Parent ID"])
    assert info.generation == int(shown["Generation"])
    assert cli_time(info.otime) == shown["Creation time"]
    assert info.readonly is readonly
    assert shown["Flags"] == ("readonly" if readonly else "-")
    assert property_ro(path) is readonly


def test_create_and_snapshots_ro_and_rw_match_the_cli(mount_off: Path) -> None:
    base = mount_off / "info"
    base.mkdir()
    source = base / "source"
    subvolume.create(source)
    write_random(source / "data", 1 << 20, seed=1)
    subvolume.snapshot(source, base / "ro", readonly=True)
    subvolume.snapshot(source, base / "rw", readonly=False)

    assert all(subvolume.is_subvolume(base / name) for name in ("source", "ro", "rw"))
    assert not subvolume.is_subvolume(base)
    assert not subvolume.is_subvolume(source / "data")
    assert not subvolume.is_subvolume(base / "absent")
    _check_info_against_cli(source, readonly=False)
    _check_info_against_cli(base / "ro", readonly=True)
    _check_info_against_cli(base / "rw", readonly=False)

    src, ro, rw = (subvolume.info(base / name) for name in ("source", "ro", "rw"))
    assert src.parent_uuid is None
    assert ro.parent_uuid == src.uuid and rw.parent_uuid == src.uuid
    assert src.parent_id == ro.parent_id == rw.parent_id == 5
    assert len({src.id, ro.id, rw.id}) == 3 and len({src.uuid, ro.uuid, rw.uuid}) == 3
    assert src.otime <= ro.otime <= rw.otime

    with pytest.raises(OSError) as refused:
        (base / "ro" / "new").write_bytes(b"x")
    assert refused.value.errno == errno.EROFS
    (base / "rw" / "new").write_bytes(b"x")

    subvolume.set_readonly(base / "rw", True)
    _check_info_against_cli(base / "rw", readonly=True)
    subvolume.set_readonly(base / "rw", False)
    _check_info_against_cli(base / "rw", readonly=False)


def test_subvolume_id_of_a_path_inside_is_its_subvolume(mount_off: Path) -> None:
    outer = mount_off / "ids"
    subvolume.create(outer)
    (outer / "dir").mkdir()
    subvolume.create(outer / "dir" / "inner")
    listed = {entry.path: id_ for id_, entry in subvolume_list(mount_off).items()}
    assert subvolume.subvolume_id(outer / "dir") == listed["ids"]
    assert subvolume.subvolume_id(outer / "dir" / "inner") == listed["ids/dir/inner"]
    assert subvolume.subvolume_id(mount_off) == 5
    assert subvolume.info(outer / "dir" / "inner").parent_id == listed["ids"]


def test_refusals(mount_off: Path) -> None:
    subvolume.create(mount_off / "refusals")
    with pytest.raises(AlreadyExists):
        subvolume.create(mount_off / "refusals")
    with pytest.raises(NotFound):
        subvolume.create(mount_off / "no-such-dir" / "x")
    for bad in ("..", "x" * 256):
        with pytest.raises(InvalidArgument):
            subvolume.create(mount_off / "refusals" / bad)
    with pytest.raises(NotFound):
        subvolume.delete(mount_off / "absent")
    (mount_off / "plain").mkdir()
    with pytest.raises(NotFound):
        subvolume.delete(mount_off / "plain")
    with pytest.raises(NotFound):
        subvolume.info(mount_off / "absent")
    with pytest.raises(NotFound):
        subvolume.snapshot(mount_off / "absent", mount_off / "snap", readonly=True)


def test_writable_snapshot_of_a_readonly_snapshot_has_the_same_bytes(mount_off: Path) -> None:
    source = mount_off / "bytes-source"
    subvolume.create(source)
    (source / "a" / "b").mkdir(parents=True)
    write_random(source / "big", 9 << 20, seed=2)
    write_random(source / "a" / "small", 12345, seed=3)
    write_random(source / "a" / "b" / "odd", (3 << 20) + 17, seed=4)
    (source / "empty").touch()
    expected = hash_tree(source)
    assert len(expected) == 4

    subvolume.snapshot(source, mount_off / "bytes-ro", readonly=True)
    subvolume.snapshot(mount_off / "bytes-ro", mount_off / "bytes-rw", readonly=False)
    write_random(source / "big", 1 << 20, seed=5)  # the source moves on; the copies do not

    assert hash_tree(mount_off / "bytes-ro") == expected
    assert hash_tree(mount_off / "bytes-rw") == expected
    assert hash_tree(source) != expected
    ro, rw = subvolume.info(mount_off / "bytes-ro"), subvolume.info(mount_off / "bytes-rw")
    assert rw.parent_uuid == ro.uuid and not rw.readonly and ro.readonly


def test_list_all_matches_the_cli_across_many_search_batches(mount_off: Path) -> None:
    base = mount_off / "many"
    subvolume.create(base)
    (base / "d").mkdir()
    # Long names: 1,100 root back-references of ~250 bytes need several 64 KiB TREE_SEARCH batches.
    names = [f"{i:04d}-" + "n" * 200 for i in range(1100)]
    for name in names[:1000]:
        subvolume.create(base / name)
    for name in names[1000:]:
        subvolume.create(base / "d" / name)
    subvolume.create(base / names[0] / "nested")

    found = subvolume.list_all(mount_off)
    listed = subvolume_list(mount_off)
    assert found == {id_: entry.parent_id for id_, entry in listed.items()}
    by_path = {entry.path: id_ for id_, entry in listed.items()}
    assert found[by_path[f"many/{names[0]}/nested"]] == by_path[f"many/{names[0]}"]
    assert found[by_path[f"many/d/{names[-1]}"]] == by_path["many"]
    assert len(found) > 1100

    subvolume.delete(base)
    settle(mount_off)
    assert not any(path.startswith("many") for path in subvolume_paths(mount_off))


def test_delete_removes_nested_subvolumes_deepest_first(
    mount_off: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = mount_off / "nest"
    subvolume.create(top)
    (top / "dir" / "deeper").mkdir(parents=True)
    layout = ["a", "a/b", "a/b/c", "a/plain/d", "dir/deeper/e", "f"]
    for relative in layout:
        (top / relative).parent.mkdir(parents=True, exist_ok=True)
        subvolume.create(top / relative)
        write_random(top / relative / "file", 4096, seed=len(relative))
    subvolume.snapshot(top / "a" / "b", top / "a" / "b" / "c" / "ro-snap", readonly=True)

    assert subvolume.nested_paths(top) == ["a", "dir/deeper/e", "f"]
    assert subvolume.nested_paths(top / "a") == ["b", "plain/d"]
    assert subvolume.nested_paths(top / "f") == []

    # Each destroy names its victim by the directory it unlinks it from: (subvolume id, name).
    where = {
        (subvolume.subvolume_id(path.parent), path.name): path
        for path in [top, *top.rglob("*")]
        if subvolume.is_subvolume(path)
    }
    destroyed: list[Path] = []
    real_call = ioctl.call

    def recording_call(
        fd: int,
        request: int,
        arg: ctypes.Structure | ctypes.c_uint64 | bytearray | int,
        operation: str,
        target: str,
    ) -> None:
        if request == ioctl.IOC_SNAP_DESTROY:
            assert isinstance(arg, ioctl.VolArgs)
            lookup = ioctl.InoLookupArgs(treeid=0, objectid=ioctl.FIRST_FREE_OBJECTID)
            real_call(fd, ioctl.IOC_INO_LOOKUP, lookup, "test", target)
            destroyed.append(where[(lookup.treeid, os.fsdecode(arg.name))])
        real_call(fd, request, arg, operation, target)

    monkeypatch.setattr(ioctl, "call", recording_call)
    subvolume.delete(top)
    monkeypatch.undo()

    expected = {top} | {top / relative for relative in layout} | {top / "a/b/c/ro-snap"}
    assert set(destroyed) == expected and len(destroyed) == len(expected)
    for i, path in enumerate(destroyed):
        later = destroyed[i + 1 :]
        assert not any(path in other.parents for other in later), f"{path} deleted before what it holds"
    assert not top.exists()
    settle(mount_off)
    assert not any(path.startswith("nest") for path in subvolume_paths(mount_off))


def test_rename_between_directories(mount_off: Path) -> None:
    (mount_off / "from").mkdir()
    (mount_off / "to").mkdir()
    subvolume.create(mount_off / "from" / "vol")
    write_random(mount_off / "from" / "vol" / "f", 4096, seed=9)
    subvolume.snapshot(mount_off / "from" / "vol", mount_off / "from" / "snap", readonly=True)
    ids = {name: subvolume.subvolume_id(mount_off / "from" / name) for name in ("vol", "snap")}

    subvolume.rename(mount_off / "from" / "vol", mount_off / "to" / "moved")
    # A read-only subvolume cannot change directories (its root's ".." would have to change): EROFS.
    # Within its directory it can be renamed.
    with pytest.raises(KernelError) as refused:
        subvolume.rename(mount_off / "from" / "snap", mount_off / "to" / "snap")
    assert refused.value.errno == errno.EROFS
    subvolume.rename(mount_off / "from" / "snap", mount_off / "from" / "snap-renamed")

    paths = {entry.path: id_ for id_, entry in subvolume_list(mount_off).items()}
    assert paths["to/moved"] == ids["vol"] and paths["from/snap-renamed"] == ids["snap"]
    assert "from/vol" not in paths and "from/snap" not in paths and "to/snap" not in paths
    assert subvolume.info(mount_off / "to" / "moved").name == "moved"
    assert subvolume.info(mount_off / "from" / "snap-renamed").name == "snap-renamed"
    assert subvolume.is_subvolume(mount_off / "to" / "moved")
    assert (mount_off / "to" / "moved" / "f").stat().st_size == 4096
    assert os.listdir(mount_off / "from") == ["snap-renamed"]
    with pytest.raises(NotFound):
        subvolume.rename(mount_off / "from" / "vol", mount_off / "to" / "again")


def test_delete_reaches_into_a_read_only_subvolume(mount_off: Path) -> None:
    top = mount_off / "ro-holder"
    subvolume.create(top)
    subvolume.create(top / "inner")
    subvolume.create(top / "inner" / "deepest")
    # The owner of a subvolume may set it read-only without any capability; what it holds stays.
    subvolume.set_readonly(top / "inner", True)
    try:
        subvolume.delete(top)
    finally:
        if (top / "inner").exists():  # leave the shared pool clean either way
            subvolume.set_readonly(top / "inner", False)
            subvolume.delete(top)
    assert not any(path.startswith("ro-holder") for path in subvolume_paths(mount_off))
