"""Crash consistency through the real socket: the served driver is SIGKILLed at random moments while
sidecar-like workers create, snapshot, restore, clone, publish, write and delete; every interrupted call
is retried until OK, and afterwards the pool holds exactly what the OK answers promised (see crash.py).

CI runs a bounded form; `make stress` (BTRFS_CSI_STRESS=1) runs at least 200 kills under simple quotas
and more under full qgroups.
"""

from pathlib import Path

import pytest

from tests.stress.crash import run_crash_workload
from tests.stress.harness import count, scaled, seeded

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize(("quota_mode", "kills"), [("simple", scaled(30, 200)), ("full", scaled(8, 60))])
def test_killed_driver_loses_nothing_and_leaves_nothing(
    btrfs_mount: Path, quota_mode: str, kills: int
) -> None:
    rng = seeded(f"crash/{quota_mode}")
    report = run_crash_workload(btrfs_mount, kills, rng, extra=("--quota-mode", quota_mode))
    print(f"crash/{quota_mode}: {report}")
    assert report.kills == kills
    assert report.retried_calls > 0, "no kill interrupted a call: the kill delays miss the workload"
    count("driver SIGKILLs survived", report.kills)
    count("  of them during start-up", report.startup_kills)
    count("crash workload calls answered OK", report.calls)
    count("  of them interrupted by a kill and retried to OK", report.retried_calls)
    count("volumes/snapshots/files checked after the kills", report.volumes + report.snapshots + report.files)
