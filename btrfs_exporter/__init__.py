"""Prometheus metrics for btrfs-csi: pool and per-volume usage read at scrape time, RPC timings, and a
background reconciler that keeps quota accounting healthy.

The usual wiring (see `server.build_registry`)::

    metrics = build_registry(pool, driver_name)
    server = grpc.server(..., interceptors=[metrics.rpc_interceptor(), error_interceptor])
    http = start_metrics_server("0.0.0.0:9842", metrics.registry)
    reconciler = metrics.reconciler(interval=60.0)
    reconciler.start()
    ...
    reconciler.stop(); http.stop()
"""

from btrfs_exporter.collector import PoolCollector
from btrfs_exporter.reconciler import Reconciler, ReconcilerMetrics
from btrfs_exporter.rpc import RpcMetrics, RpcMetricsInterceptor
from btrfs_exporter.server import Metrics, MetricsServer, build_registry, start_metrics_server

__all__ = [
    "Metrics",
    "MetricsServer",
    "PoolCollector",
    "Reconciler",
    "ReconcilerMetrics",
    "RpcMetrics",
    "RpcMetricsInterceptor",
    "build_registry",
    "start_metrics_server",
]
