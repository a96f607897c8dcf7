"""Prometheus metrics for btrfs-csi: pool and per-volume usage read at scrape time, RPC timings, and a
background reconciler that keeps quota accounting healthy.

The usual wiring (see `server.build_registry`)::

    metrics = build_registry(pool, driver_name)
    server = csi.server.build_server(..., observer=metrics.rpc)  # told of every RPC
    http = start_metrics_server(("0.0.0.0", 9842), metrics.registry)
    reconciler = metrics.reconciler(interval=60.0)
    reconciler.start()
    ...
    reconciler.stop(); http.stop()
"""

from btrfs_exporter.collector import PoolCollector
from btrfs_exporter.reconciler import Reconciler, ReconcilerMetrics
from btrfs_exporter.rpc import RpcMetrics
from btrfs_exporter.server import Metrics, MetricsServer, build_registry, start_metrics_server

__all__ = [
    "Metrics",
    "MetricsServer",
    "PoolCollector",
    "Reconciler",
    "ReconcilerMetrics",
    "RpcMetrics",
    "build_registry",
    "start_metrics_server",
]
