"""What tuning parameters add to a CreateVolume, through the unix socket, in one run.

Run as root (it makes its own loop-device btrfs and removes it, also on failure):

    .venv/bin/python -m bench.bench_tuning [--samples 200]

One pool, the driver served in-process, a real gRPC client. Creates without parameters and with each
kind of tuning are interleaved (one of each per round, the order rotating), so drift in the machine's
load and a position in the round hit all alike; each figure is a median in ms and its ratio to the
plain create, against the goal of at most 1.1x.
"""

import argparse
import sys
import time

from bench.bench_grpc import CAPABILITY, MiB, median_ms, served
from btrfs_core.pool import Pool
from csi.pb import csi_pb2
from tests.support import loop_pool

GOAL = 1.1
KINDS: dict[str, tuple[dict[str, str], dict[str, str]]] = {  # name: (parameters, mutable_parameters)
    "no parameters": ({}, {}),
    "compression zstd": ({"compression": "zstd"}, {}),
    "class compression zstd:3": ({}, {"compression": "zstd:3"}),
    "nodatacow": ({"nodatacow": "true"}, {}),
}


def run(samples: int) -> dict[str, float]:
    times: dict[str, list[float]] = {kind: [] for kind in KINDS}
    with loop_pool(size=4 << 30, prefix="btrfs-csi-bench-") as mount:
        pool = Pool.open(mount)
        with served(pool) as (_identity, controller, _node):
            order = list(KINDS.items())
            for i in range(samples):
                for kind, (parameters, mutable) in order[i % len(order) :] + order[: i % len(order)]:
                    request = csi_pb2.CreateVolumeRequest(
                        name=f"{kind.replace(' ', '-').replace(':', '-')}-{i}",
                        capacity_range=csi_pb2.CapacityRange(required_bytes=MiB),
                        volume_capabilities=[CAPABILITY],
                        parameters=parameters,
                        mutable_parameters=mutable,
                    )
                    started = time.perf_counter()
                    controller.CreateVolume(request, timeout=30)
                    times[kind].append(time.perf_counter() - started)
    return {kind: median_ms(values) for kind, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    medians = run(args.samples)
    base = medians["no parameters"]
    print(
        f"CreateVolume with tuning parameters, median of {args.samples} each (interleaved), goal <= {GOAL}x"
    )
    for kind, median in medians.items():
        ratio = median / base
        verdict = "" if kind == "no parameters" else ("PASS" if ratio <= GOAL else "MISS")
        print(f"  {kind:<26} {median:7.3f} ms  {ratio:5.2f}x  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
