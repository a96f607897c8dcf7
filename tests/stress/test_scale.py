"""Scale: a pool with many volumes and as many snapshots (made through the Pool API, bench/bench_scale.py),
then measured through a served driver: start-up to Probe ready, paging through every volume and
snapshot with max_entries 500, CreateVolume latency. CI runs 300 of each; `make stress` runs 10,000.

The bounds here are generous absolute ones, to catch a driver that re-reads the whole pool per page or per
create; `python -m bench.bench_scale` prints the comparison with a 10-volume pool (target: within 2x).
"""

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.bench_scale import measure, scaled_pool
from tests.conftest import kernel_skip_reason
from tests.stress.harness import check_consistent, count, scaled, served

pytestmark = pytest.mark.kernel

VOLUMES = scaled(300, 10_000)


@pytest.fixture(scope="module")
def big_pool() -> Iterator[Path]:
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    with scaled_pool(VOLUMES) as mount:
        yield mount


def test_start_list_and_create_at_scale(big_pool: Path) -> None:
    measures = measure(big_pool, samples=20, starts=3)
    print(f"scale {VOLUMES}: {measures}")
    assert measures.volumes == VOLUMES and measures.snapshots == VOLUMES
    assert measures.startup < 5.0, measures
    assert measures.create < 0.05, measures
    per_volume = measures.list_volumes / VOLUMES
    assert per_volume < 0.001, f"ListVolumes takes {per_volume * 1e6:.0f} µs per volume"
    assert measures.list_snapshots / VOLUMES < 0.001, measures
    count("volumes and snapshots in the scale pool", 2 * VOLUMES)


def test_the_scale_pool_is_consistent_with_the_oracle(big_pool: Path) -> None:
    with served(big_pool) as driver:
        state = check_consistent(driver.client(), big_pool, page=500)
    assert len(state.volumes) >= VOLUMES and len(state.snapshots) == VOLUMES
