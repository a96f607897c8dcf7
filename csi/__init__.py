"""csi: the CSI gRPC surface of btrfs-csi (Identity, Controller and Node services) over btrfs_core."""

import os

# gRPC reads its experiments once, when it is imported, so this precedes every import of grpc by the
# driver. Its EventEngine listener hands each accepted connection's reads and writes to threads of its
# own: one more thread hop per call than the older listener, whose connections are served by the thread
# that polls the server's completion queue. Without it (bench_goals, 16 clients, interleaved runs) a
# ControllerGetCapabilities costs the driver 0.11 ms of CPU instead of 0.16, a CreateVolume 0.55-0.62
# instead of 0.65-0.67. gRPC documents the variable as the way to turn an experiment off; an operator's
# own GRPC_EXPERIMENTS is kept as it is. A grpcio that no longer knows the experiment logs "Unknown
# experiment" as the driver starts, which tests/csi/test_cli.py's JSON-only log check refuses.
GRPC_EXPERIMENTS = "-event_engine_listener"
os.environ.setdefault("GRPC_EXPERIMENTS", GRPC_EXPERIMENTS)
