"""Test support shared by the suites (and the demo and bench): `eventually`, the one way a test waits
for what another thread, process or the kernel does."""

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(condition: Callable[[], T], what: str, timeout: float = 30.0, interval: float = 0.02) -> T:
    """Calls `condition` until it returns something true, and returns that; fails the test, naming
    `what` and the last result, once `timeout` seconds have passed without."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout} s; last: {result!r}")
        time.sleep(interval)
