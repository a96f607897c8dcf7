"""Scrape cost of the btrfs-csi exporter at 10 to 10,000 volumes, next to one `btrfs qgroup show`.

Run as root (it makes its own loop-device btrfs and removes it, also on failure):

    .venv/bin/python -m bench.bench_scrape [--sizes 10,100,1000,10000] [--repeat 15] [--quota-mode simple]

One pool grows through the sizes; every tenth volume gets a snapshot. For each size it measures the
median of `--repeat` runs of:

- scrape: a full scrape as /metrics serves it, `exposition.render(registry)` (collect() fully consumed
  plus the text exposition), with the collector's directory index warm (the steady state);
- generate_latest: the same through prometheus_client's own text exposition, for comparison;
- cold: the first scrape of a new collector (its index empty: every object read once);
- unindexed: a scrape listing the pool through Pool.list_volumes()/list_snapshots() every time;
- the parts: `Pool.stats.usage_all()` (one TREE_SEARCH), the listing alone (Pool.list_volumes() and
  list_snapshots()), the text exposition alone (render of already collected families);
- the library's writer on the same collected families: `generate_latest` of the row families as they
  are (through their `.samples`), and of the same samples as the library's own GaugeMetricFamily (what
  the collector would yield without exposition.py): the custom writer stays only while these are
  several times the exposition alone;
- `btrfs qgroup show --raw <pool>`: one process, as a shell-out exporter would run it; its runs and the
  scrape's are taken in turn, so that their ratio holds on a loaded machine.
"""

import argparse
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bench.bench_core import cli
from btrfs_core import filesystem
from btrfs_core.pool import Pool
from btrfs_exporter import build_registry
from btrfs_exporter.exposition import GaugeRows, render
from tests.support import loop_pool

MiB = 1 << 20
PVC = "csi.storage.k8s.io/pvc/"


def median_ms(action: Callable[[], object], repeat: int) -> float:
    return interleaved_ms([action], repeat)[0]


def interleaved_ms(actions: list[Callable[[], object]], repeat: int) -> list[float]:
    """The median ms of each action, their runs taken in turn: a change of the machine's load during
    the runs weighs on every action alike (the ratio of two actions measured one after the other
    swung from 0.66x to 1.23x on a loaded machine)."""
    runs: list[list[float]] = [[] for _ in actions]
    for _ in range(repeat):
        for action, taken in zip(actions, runs, strict=True):
            start = time.perf_counter()
            action()
            taken.append((time.perf_counter() - start) * 1000)
    return [statistics.median(taken) for taken in runs]


def grow(pool: Pool, volumes: int, have: int) -> None:
    for i in range(have, volumes):
        name = f"pvc-{i:05d}-0000-4000-8000-000000000000"
        pool.create_volume(name, 64 * MiB, metadata={PVC + "name": f"data-{i}", PVC + "namespace": "bench"})
        if i % 10 == 0:
            pool.create_snapshot(f"snapshot-{i:05d}", name)


def qgroup_show(root: Path) -> None:
    """One `btrfs qgroup show --raw` of the pool, as a shell-out exporter would run it."""
    cli("btrfs", "qgroup", "show", "--raw", str(root))


def measure(pool: Pool, repeat: int) -> dict[str, float]:
    show = functools.partial(qgroup_show, pool.root)
    indexed = build_registry(pool, "bench.btrfs.csi")
    unindexed = build_registry(pool, "bench.btrfs.csi", index=False)
    few = max(3, repeat // 5)
    cold = median_ms(lambda: render(build_registry(pool, "bench.btrfs.csi").registry), few)
    render(indexed.registry)  # warm the index
    families = list(indexed.collector.collect())

    class Frozen(Collector):
        """The metrics of one scrape again: the cost of the text exposition alone."""

        def collect(self) -> Iterable[Metric]:
            return families

    class Native(Collector):
        """The same samples in the library's own families (made once, outside the timing)."""

        def __init__(self) -> None:
            self.families = [_native(family) for family in families]

        def collect(self) -> Iterable[Metric]:
            return self.families

    frozen = CollectorRegistry()
    frozen.register(Frozen())
    native = CollectorRegistry()
    native.register(Native())
    scrape, shown = interleaved_ms([lambda: render(indexed.registry), show], repeat)
    return {
        "scrape": scrape,
        "generate_latest": median_ms(lambda: generate_latest(indexed.registry), few),
        "cold": cold,
        "unindexed": median_ms(lambda: render(unindexed.registry), few),
        "usage_all": median_ms(pool.stats.usage_all, repeat),
        "list": median_ms(lambda: (pool.list_volumes(), pool.list_snapshots()), few),
        "exposition": median_ms(lambda: render(frozen), repeat),
        "exposition_library": median_ms(lambda: generate_latest(frozen), few),
        "exposition_native": median_ms(lambda: generate_latest(native), few),
        "show": shown,
    }


def _native(family: Metric) -> Metric:
    if not isinstance(family, GaugeRows):
        return family
    native = GaugeMetricFamily(family.name, family.documentation, labels=family.labelnames)
    for labels, value in zip(family.labels, family.values, strict=True):
        native.add_metric(labels.values, value)
    return native


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10,100,1000,10000")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--quota-mode", choices=("simple", "full"), default="simple")
    parser.add_argument("--pool-size", type=int, default=8 << 30, help="bytes of the sparse loop image")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_scrape: needs root (loop device, mkfs.btrfs, mount)", file=sys.stderr)
        return 2
    sizes = sorted(int(s) for s in args.sizes.split(","))

    rows = []
    with loop_pool(size=args.pool_size, prefix="btrfs-csi-bench-") as mount:
        pool = Pool.open(mount, quota_mode=args.quota_mode, overprovision=1000.0)
        have = 0
        for volumes in sizes:
            started = time.perf_counter()
            grow(pool, volumes, have)
            filesystem.sync(pool.root)
            created = time.perf_counter() - started
            print(
                f"# {volumes} volumes: created {volumes - have} (+ snapshots) in {created:.1f} s,"
                f" {created / max(1, volumes - have) * 1000:.2f} ms each",
                file=sys.stderr,
                flush=True,
            )
            have = volumes
            rows.append((volumes, (volumes + 9) // 10, measure(pool, args.repeat)))

    print(f"\nquota mode {args.quota_mode}, kernel {os.uname().release}, median of {args.repeat} runs (ms)\n")
    header = (
        "| volumes | snapshots | qgroup show | scrape | scrape/show | µs/volume | via generate_latest"
        " | cold scrape | unindexed | unindexed/show | usage_all | list | exposition"
        " | exposition via generate_latest | generate_latest of GaugeMetricFamily |"
    )
    print(header)
    print("|" + "---:|" * (header.count("|") - 1))
    for volumes, snapshots, m in rows:
        print(
            f"| {volumes:,} | {snapshots:,} | {m['show']:.2f} | {m['scrape']:.2f} |"
            f" {m['scrape'] / m['show']:.2f} | {m['scrape'] * 1000 / volumes:.1f} |"
            f" {m['generate_latest']:.2f} | {m['cold']:.2f} | {m['unindexed']:.2f} |"
            f" {m['unindexed'] / m['show']:.2f} | {m['usage_all']:.2f} | {m['list']:.2f} |"
            f" {m['exposition']:.2f} | {m['exposition_library']:.2f} | {m['exposition_native']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
