"""Prometheus metrics for btrfs-csi: pool and per-volume usage read at scrape time, RPC timings, and
what the pool's reconciler (btrfs_core.maintenance) repairs.

The usual wiring (see `server.build_registry`)::

    metrics = build_registry(pool, driver_name)
    server = csi.server.build_server(..., observer=metrics.rpc)  # told of every RPC
    http = start_metrics_server(("0.0.0.0", 9842), metrics.registry)
    reconciler = btrfs_core.maintenance.Reconciler(pool, metrics.reconciler_metrics)
    reconciler.start()
    ...
    reconciler.stop(); http.stop()
"""

from btrfs_exporter.collector import PoolCollector
from btrfs_exporter.reconciler import ReconcilerMetrics
from btrfs_exporter.rpc import RpcMetrics
from btrfs_exporter.server import Metrics, MetricsServer, build_registry, start_metrics_server

__all__ = [
    "Metrics",
    "MetricsServer",
    "PoolCollector",
    "ReconcilerMetrics",
    "RpcMetrics",
    "build_registry",
    "start_metrics_server",
]
