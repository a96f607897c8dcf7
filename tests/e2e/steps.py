"""What every step of the e2e suite does, whatever the cluster: log a line, run a command, wait for a
condition; and how either provider brings its cluster up for a run (`brought_up`) or from the command
line (`command`)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

from tests.support import eventually

T = TypeVar("T")


class Bringable(Protocol):
    def preflight(self) -> None: ...  # refuses a cluster this run did not make, and what is missing
    def up(self) -> None: ...
    def down(self) -> None: ...


B = TypeVar("B", bound=Bringable)


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


@contextlib.contextmanager
def brought_up(cluster: B, keep: bool, kept: str) -> Iterator[B]:
    """The cluster up for one run and down afterwards, or, with `keep`, left up and `kept` logged (how to
    take it down). The preflight runs outside: a run never tears down a cluster it did not make."""
    cluster.preflight()
    try:
        cluster.up()
        yield cluster
    finally:
        if keep:
            log(kept)
        else:
            cluster.down()


def command(argv: list[str], module: str) -> str | None:
    """`up` or `down` from `python -m <module> up|down`; None after printing the usage."""
    if len(argv) != 1 or argv[0] not in ("up", "down"):
        print(f"usage: python -m {module} up|down", file=sys.stderr)
        return None
    return argv[0]
