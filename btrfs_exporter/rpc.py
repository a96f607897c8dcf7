"""RPC metrics: the duration of every CSI call by method and final status code, and the calls in flight.

The csi server's one interceptor reports each call here (`started`, then `finished` with the code the
client got); this module knows nothing of gRPC.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# CSI calls range from microseconds (Probe, GetCapabilities) to seconds (a snapshot on a busy pool).
DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class RpcMetrics:
    """The RPC metric objects, registered in one registry; an RpcObserver of the csi server."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "btrfs_csi_rpc_duration_seconds",
            "Time the driver spent serving a CSI RPC, by short method name and final gRPC status code.",
            labelnames=("method", "code"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "btrfs_csi_rpc_in_flight", "CSI RPCs being served right now.", registry=registry
        )

    def started(self, method: str) -> None:
        self.in_flight.inc()

    def finished(self, method: str, code: str, seconds: float) -> None:
        self.in_flight.dec()
        self.duration.labels(method, code).observe(seconds)


class TransferMetrics:
    """Bytes of send streams moved between node plugins; a TransferObserver of the peer service."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.bytes = Counter(
            "btrfs_csi_peer_transfer_bytes",
            "Bytes of snapshot send streams moved between node plugins, by direction (sent, received).",
            labelnames=("direction",),
            registry=registry,
        )

    def moved(self, direction: str, nbytes: int) -> None:
        self.bytes.labels(direction).inc(nbytes)
