"""`btrfs-csi serve ...` / `python -m csi serve ...`: open the pool, serve CSI on a unix socket until
SIGTERM or SIGINT, then stop gracefully.

Exit codes: 0 after a graceful stop, 2 when the configuration or the pool is refused (one line on
stderr saying why, no traceback).
"""

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType

import grpc

from btrfs_core.errors import BtrfsCoreError
from btrfs_core.maintenance import Reconciler
from btrfs_core.pool import Pool
from btrfs_core.version import driver_version
from btrfs_exporter.server import build_registry, start_metrics_server
from csi import affinity
from csi import logging as csi_logging
from csi.config import Config, ConfigError, parse_args
from csi.controller import ControllerServicer
from csi.identity import IdentityServicer
from csi.locks import KeyedTryLock
from csi.node import NodeServicer
from csi.peer.observer import TransferObserver
from csi.peer.server import PeerEndpoint, start_peer_endpoint
from csi.server import RpcObserver, ServeError, bind_unix_socket, build_server, prepare_socket_path

log = logging.getLogger("csi")
EXIT_REFUSED = 2


@dataclass
class Driver:
    """A started server and what it serves; `stop` ends it and removes the socket."""

    config: Config
    pool: Pool
    server: grpc.Server
    peers: PeerEndpoint | None = None  # with --peer-address: the peer service and client

    def stop(self, grace: float | None = None) -> None:
        grace = self.config.grace_seconds if grace is None else grace
        self.server.stop(grace).wait()
        self.config.socket_path.unlink(missing_ok=True)
        if self.peers is not None:
            self.peers.stop(grace)


def start(
    config: Config,
    pool: Pool,
    observer: RpcObserver | None = None,
    transfers: TransferObserver | None = None,
) -> Driver:
    """Builds the servicers over an opened pool and serves them on the configured socket (and the peer
    service on its address, when configured); `transfers` is told of the bytes moved between peers."""
    locks = KeyedTryLock()  # one set for every service: a volume is busy whichever RPC holds it
    peers = start_peer_endpoint(config, pool, locks, transfers) if config.peer_address is not None else None
    try:
        return _start_csi(config, pool, locks, observer, peers)
    except BaseException:
        if peers is not None:
            peers.stop(0)
        raise


def _start_csi(
    config: Config, pool: Pool, locks: KeyedTryLock, observer: RpcObserver | None, peers: PeerEndpoint | None
) -> Driver:
    # The generated .pyi marks every RPC abstract; at run time the base answers those a servicer leaves
    # out with NotImplementedError, which the interceptor maps to UNIMPLEMENTED.
    server = build_server(
        IdentityServicer(config, pool),
        ControllerServicer(config, pool, locks, peers),  # type: ignore[abstract]
        NodeServicer(config, pool, locks),  # type: ignore[abstract]
        max_workers=config.max_workers,
        observer=observer,
    )
    bind_unix_socket(server, config.socket_path)
    server.start()
    return Driver(config, pool, server, peers)


def serve(config: Config) -> int:
    try:
        cpu = affinity.pin(config.cpu)  # before any thread starts: they inherit it
        # The socket first, then the pool's exclusive lock: a second instance must not touch the pool
        # (opening it clears staging), whichever socket it was given.
        prepare_socket_path(config.socket_path)
        pool = Pool.open(config.pool, config.quota_mode, overprovision=config.overprovision, exclusive=True)
    except (affinity.AffinityError, ServeError, BtrfsCoreError, OSError) as exc:
        print(f"btrfs-csi: refusing to start: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    stopping = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # One registry for the RPC interceptor, the scrape-time collector and the reconciler's counters.
    metrics = build_registry(pool, config.driver_name)
    try:
        driver = start(config, pool, metrics.rpc, metrics.transfers)
    except ServeError as exc:
        print(f"btrfs-csi: refusing to start: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    http = None
    if config.metrics_address:
        try:
            http = start_metrics_server(config.metrics_address, metrics.registry)
        except OSError as exc:
            driver.stop(grace=0)
            host, port = config.metrics_address
            print(f"btrfs-csi: refusing to start: --metrics-address {host}:{port}: {exc}", file=sys.stderr)
            return EXIT_REFUSED
    reconciler = Reconciler(pool, metrics.reconciler_metrics)
    reconciler.start()
    status = pool.stats.quota_status()
    log.info(
        "serving",
        extra={
            "fields": {
                "version": driver_version(),
                "driver": config.driver_name,
                "node_id": config.node_id,
                "endpoint": config.endpoint,
                "pool": str(config.pool),
                "quota_mode": status.mode.value,
                "quota_inconsistent": status.inconsistent,
                "peer_port": driver.peers.port if driver.peers is not None else None,
                "cpu": cpu,
            }
        },
    )
    # Wake up now and then: a signal handler only runs on the main thread between bytecodes.
    while not stopping.wait(timeout=1.0):
        pass
    log.info("stopping", extra={"fields": {"grace_seconds": config.grace_seconds}})
    driver.stop()
    reconciler.stop()
    if http is not None:
        http.stop()
    log.info("stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(list(sys.argv[1:] if argv is None else argv))
    except ConfigError as exc:
        print(f"btrfs-csi: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    csi_logging.setup(config.log_level, config.log_format)
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
