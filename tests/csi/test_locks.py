"""Per-ID try-locks: a second holder is refused at once, never blocked; release on every exit."""

import threading

import grpc
import pytest

from csi.errors import CsiError
from csi.locks import KeyedTryLock, snapshot_key, target_key, volume_key


def test_second_holder_is_refused_and_names_the_key() -> None:
    locks = KeyedTryLock()
    with locks.hold(volume_key("a")):
        with pytest.raises(CsiError, match="volume a") as refused, locks.hold(volume_key("a")):
            pass
        assert refused.value.code == grpc.StatusCode.ABORTED
        with locks.hold(volume_key("b")):  # other IDs are independent
            pass
    with locks.hold(volume_key("a")):  # released
        pass


def test_kinds_do_not_collide() -> None:
    locks = KeyedTryLock()
    keys = (volume_key("x"), snapshot_key("x"), target_key("x"))
    with locks.hold(keys[0]), locks.hold(keys[1]), locks.hold(keys[2]):  # none refused the others
        for key in keys:  # and each is held
            with pytest.raises(CsiError), locks.hold(key):
                pass


def test_several_keys_are_all_or_nothing() -> None:
    locks = KeyedTryLock()
    with locks.hold(target_key("/t")):
        with pytest.raises(CsiError), locks.hold(volume_key("v"), target_key("/t")):
            pass
        with locks.hold(volume_key("v")):  # the free key was not taken either
            pass


def test_released_when_the_body_raises() -> None:
    locks = KeyedTryLock()
    with pytest.raises(ValueError), locks.hold(volume_key("v")):
        raise ValueError("boom")
    with locks.hold(volume_key("v")):  # released
        pass


def test_concurrent_callers_exactly_one_wins_none_waits() -> None:
    locks = KeyedTryLock()
    inside = threading.Event()
    release = threading.Event()
    outcomes: list[str] = []

    def first() -> None:
        with locks.hold(volume_key("v")):
            inside.set()
            release.wait(10)
        outcomes.append("first done")

    holder = threading.Thread(target=first)
    holder.start()
    assert inside.wait(10)
    refused = []

    def contender() -> None:
        try:
            with locks.hold(volume_key("v")):
                outcomes.append("contender got it")
        except CsiError:
            refused.append(True)

    contenders = [threading.Thread(target=contender) for _ in range(8)]
    for thread in contenders:
        thread.start()
    for thread in contenders:
        thread.join(5)
        assert not thread.is_alive()  # refused promptly while the holder still holds
    release.set()
    holder.join(10)
    assert refused == [True] * 8
    assert outcomes == ["first done"]
