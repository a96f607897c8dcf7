"""Volume and snapshot IDs from CSI names, and IDs from requests: pure, no kernel needed."""

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from btrfs_core.errors import InvalidArgument
from btrfs_core.ids import MAX_NAME_BYTES, check_id
from btrfs_core.pool import Pool


def _hashed(name: str) -> str:
    return "h-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:40]


@pytest.mark.parametrize("name", ["pvc-0a1b2c", "a", "A.b_c-d", "9", "x" * 100, "pvc-" + "0" * 96])
def test_safe_names_are_kept(name: str) -> None:
    assert Pool.volume_id(name) == name == Pool.snapshot_id(name)


@pytest.mark.parametrize(
    "name",
    [
        "..",
        ".",
        "/",
        "a/b",
        "../x",
        "a b",
        ".hidden",
        "-rf",
        "_x",
        "välue",
        "x" * 101,
        "y" * MAX_NAME_BYTES,
        "\n",
    ],
)
def test_unsafe_or_long_names_are_hashed(name: str) -> None:
    assert Pool.volume_id(name) == _hashed(name) == Pool.volume_id(name)
    assert Pool.snapshot_id(name) == _hashed(name)
    assert check_id(Pool.volume_id(name), "volume") == _hashed(name)


@pytest.mark.parametrize("name", ["", "x\x00y", "\x00", "n" * (MAX_NAME_BYTES + 1), "€" * 43, "n" * 10240])
def test_empty_nul_and_overlong_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        Pool.volume_id(name)
    with pytest.raises(InvalidArgument):
        Pool.snapshot_id(name)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "..",
        "/",
        "a/b",
        "../x",
        "/etc",
        "x\x00y",
        "-a",
        ".staging",
        "a b",
        "a" * 129,
        "a" * 10240,
        "é",
    ],
)
def test_request_ids_that_could_escape_are_refused(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        check_id(bad, "volume")


@given(st.text(min_size=1, max_size=140))
def test_every_accepted_name_gives_a_safe_stable_id(name: str) -> None:
    try:
        volume_id = Pool.volume_id(name)
    except InvalidArgument:
        assert "\x00" in name or len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES
        return
    assert volume_id == Pool.volume_id(name)
    assert check_id(volume_id, "volume") == volume_id
    assert "/" not in volume_id and volume_id not in (".", "..") and len(volume_id) <= 128


@given(st.lists(st.text(min_size=1, max_size=32).filter(lambda s: "\x00" not in s), unique=True, max_size=30))
def test_distinct_names_give_distinct_ids(names: list[str]) -> None:
    assert len({Pool.volume_id(name) for name in names}) == len(names)


def test_a_name_shaped_like_a_hashed_id_gets_an_id_of_its_own() -> None:
    # "h-" + 40 hex is what a long or unsafe name hashes to: kept as it is, it would be that name's ID.
    unsafe = "pvc with spaces"
    shaped = Pool.volume_id(unsafe)
    assert shaped == _hashed(unsafe)
    assert Pool.volume_id(shaped) == _hashed(shaped) != shaped
    assert Pool.snapshot_id(shaped) == _hashed(shaped)
    # Only that exact shape: other names that start with h- keep their IDs, as existing volumes have them.
    for kept in ("h-1", "h-" + "0" * 39, "h-" + "0" * 41, "h-" + "A" * 40, "H-" + "0" * 40):
        assert Pool.volume_id(kept) == kept
