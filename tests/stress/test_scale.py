"""Scale: a pool with many volumes and as many snapshots (made through the Pool API, bench/bench_scale.py),
then served: the driver starts on it (three times), pages through every volume and snapshot with
max_entries 500 and still creates volumes. CI runs 300 of each; `make stress` runs 10,000.

What holds at scale is asserted here; how fast is the bench's (`python -m bench.bench_scale` compares with
a 10-volume pool, target within 2x): timed bounds in a test fail on a busy machine, not on a slow driver.
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
    count("volumes and snapshots in the scale pool", 2 * VOLUMES)


def test_the_scale_pool_is_consistent_with_the_oracle(big_pool: Path) -> None:
    with served(big_pool) as driver:
        state = check_consistent(driver.client(), big_pool, page=500)
    assert len(state.volumes) >= VOLUMES and len(state.snapshots) == VOLUMES
