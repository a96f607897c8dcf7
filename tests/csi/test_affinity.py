"""--cpu: the driver's threads kept on one CPU. pin() acts on the calling thread (and the threads it starts
afterwards), so each case runs in a thread of its own and leaves the test process as it was."""

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import pytest

from csi import affinity

T = TypeVar("T")
ALLOWED = os.sched_getaffinity(0)
several_cpus = pytest.mark.skipif(len(ALLOWED) < 2, reason="needs a process allowed on 2 CPUs or more")


def in_thread(work: Callable[[], T]) -> T:
    """work() in a new thread; its result, or its exception raised here."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


def mask() -> set[int]:
    return os.sched_getaffinity(0)


@several_cpus
def test_auto_pins_the_thread_and_those_it_starts_to_one_cpu() -> None:
    def work() -> tuple[int | None, set[int], set[int]]:
        cpu = affinity.pin(affinity.AUTO)
        return cpu, mask(), in_thread(mask)

    cpu, own, started = in_thread(work)
    assert cpu in ALLOWED
    assert own == started == {cpu}


@several_cpus
def test_a_cpu_by_number() -> None:
    cpu = max(ALLOWED)
    assert in_thread(lambda: (affinity.pin(cpu), mask())) == (cpu, {cpu})


def test_off_and_a_single_allowed_cpu_leave_the_scheduler_alone() -> None:
    assert in_thread(lambda: (affinity.pin(affinity.OFF), mask())) == (None, ALLOWED)

    def one_allowed() -> tuple[int | None, set[int]]:
        os.sched_setaffinity(0, {min(ALLOWED)})
        return affinity.pin(affinity.AUTO), mask()

    assert in_thread(one_allowed) == (None, {min(ALLOWED)})


def test_a_cpu_the_process_may_not_use_is_refused_by_name() -> None:
    def work() -> set[int]:
        with pytest.raises(affinity.AffinityError, match=r"^--cpu 4096: this process may only use CPUs "):
            affinity.pin(4096)
        return mask()

    assert in_thread(work) == ALLOWED


def test_current_cpu_is_one_the_process_may_use() -> None:
    assert affinity.current_cpu() in ALLOWED
