"""What every step of the e2e suite does, whatever the cluster: log a line, run a command, wait for a
condition."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import TypeVar

from tests.support import eventually

T = TypeVar("T")


def log(message: str) -> None:
    print(f"[e2e] {message}", file=sys.stderr, flush=True)


def run(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    log("$ " + " ".join(args))
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 2.0) -> T:
    """`eventually` with the cluster's terms: polls `probe` every `interval` seconds until it returns
    something other than None or False (0 and "" are answers) and returns that; any exception counts
    as not yet (the API server or the object may not be there yet). Fails after `timeout`."""

    def answered() -> tuple[T, ...]:
        value = probe()
        return () if value is None or value is False else (value,)

    return eventually(answered, what, timeout, interval, ignoring=(Exception,))[0]
