"""The exporter's registry and its HTTP endpoint.

`build_registry` puts everything in a fresh CollectorRegistry (never the global one, so that tests and
several pools can have their own); `start_metrics_server` serves it on HOST:PORT at /metrics with the
exporter's fast text exposition (`exposition.render`), gzip-compressed when the scraper accepts it
(Prometheus does).
"""

import gzip
import logging
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry

from btrfs_core.pool import Pool
from btrfs_exporter.collector import PoolCollector
from btrfs_exporter.exposition import CONTENT_TYPE, render
from btrfs_exporter.reconciler import DEFAULT_INTERVAL, Reconciler, ReconcilerMetrics
from btrfs_exporter.rpc import RpcMetrics


@dataclass(frozen=True)
class Metrics:
    """A pool's registry and the metric objects the csi server (`rpc`) and the reconciler write to."""

    registry: CollectorRegistry
    pool: Pool
    collector: PoolCollector
    rpc: RpcMetrics
    reconciler_metrics: ReconcilerMetrics

    def reconciler(self, interval: float = DEFAULT_INTERVAL) -> Reconciler:
        return Reconciler(self.pool, self.reconciler_metrics, interval)


def build_registry(pool: Pool, driver_name: str, index: bool = True) -> Metrics:
    """A fresh registry with the pool collector, the RPC metrics and the reconciler's counters.

    Registering does not scan the pool (the collector describes its metrics without reading).
    """
    registry = CollectorRegistry()
    collector = PoolCollector(pool, driver_name, index=index)
    registry.register(collector)
    return Metrics(registry, pool, collector, RpcMetrics(registry), ReconcilerMetrics(registry))


def parse_address(address: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (all interfaces) -> (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"metrics address {address!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"metrics address {address!r}: put an IPv6 host in brackets, [{host}]:{port_text}")
    return host or "0.0.0.0", int(port_text)


log = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def metrics_app(registry: CollectorRegistry) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """A WSGI app answering GET /metrics (and /) with the registry's text exposition."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO", "/") not in ("/", "/metrics"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: try /metrics\n"]
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"GET /metrics\n"]
        try:
            body = render(registry)
        except Exception:
            log.exception("rendering /metrics failed")
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")])
            return [b"rendering metrics failed; see the driver's log\n"]
        headers = [("Content-Type", CONTENT_TYPE)]
        if "gzip" in environ.get("HTTP_ACCEPT_ENCODING", ""):
            body = gzip.compress(body, compresslevel=1)  # text compresses ~15x even at level 1
            headers.append(("Content-Encoding", "gzip"))
        headers.append(("Content-Length", str(len(body))))
        start_response("200 OK", headers)
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds up stop()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # one line per scrape is noise
        pass


class MetricsServer:
    """The HTTP server of /metrics, running in a daemon thread."""

    def __init__(self, httpd: WSGIServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def host(self) -> str:
        return str(self._httpd.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (the chosen one when the address asked for port 0)."""
        return int(self._httpd.server_address[1])

    def stop(self, timeout: float = 10.0) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout)


def start_metrics_server(address: str | tuple[str, int], registry: CollectorRegistry) -> MetricsServer:
    """Serves `registry` at http://HOST:PORT/metrics until `stop()`; port 0 picks a free port.

    `address` is "HOST:PORT" ("[::1]:9842", ":9842" for all interfaces) or a (host, port) pair.
    """
    host, port = parse_address(address) if isinstance(address, str) else address
    host = host.strip("[]") or "0.0.0.0"
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("_MetricsServer", (_Server,), {"address_family": family})
    httpd: WSGIServer = make_server(host, port, metrics_app(registry), server_class, _QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="btrfs-csi-metrics", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)
