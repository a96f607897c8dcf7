"""The exporter's registry and its HTTP endpoint.

`build_registry` puts everything in a fresh CollectorRegistry (never the global one, so that tests and
several pools can have their own); `start_metrics_server` serves it on HOST:PORT at /metrics with the
exporter's fast text exposition (`exposition.render`), gzip-compressed when the scraper accepts it
(Prometheus does). HTTP is the standard library's (wsgiref's server and request handler, serving a WSGI
app function); what is added is the bound: a few worker threads, socket timeouts, and a gate that holds
connections without a thread until their request has arrived, so slow or idle clients never take the
workers a scrape needs.
"""

import contextlib
import gzip
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry

from btrfs_core.pool import Pool
from btrfs_exporter.collector import PoolCollector
from btrfs_exporter.exposition import CONTENT_TYPE, render
from btrfs_exporter.reconciler import ReconcilerMetrics
from btrfs_exporter.rpc import RpcMetrics, TransferMetrics


@dataclass(frozen=True)
class Metrics:
    """A pool's registry and the metric objects the csi server (`rpc`), the peer service (`transfers`)
    and the reconciler report to."""

    registry: CollectorRegistry
    pool: Pool
    collector: PoolCollector
    rpc: RpcMetrics
    reconciler_metrics: ReconcilerMetrics  # the observer of the pool's Reconciler
    transfers: TransferMetrics


def build_registry(pool: Pool, driver_name: str, index: bool = True) -> Metrics:
    """A fresh registry with the pool collector, the RPC metrics and the reconciler's counters.

    Registering does not scan the pool (the collector describes its metrics without reading).
    """
    registry = CollectorRegistry()
    collector = PoolCollector(pool, driver_name, index=index)
    registry.register(collector)
    return Metrics(
        registry,
        pool,
        collector,
        RpcMetrics(registry),
        ReconcilerMetrics(registry),
        TransferMetrics(registry),
    )


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


# A connection is handed to a worker only once its request head has arrived: a client that sends half a
# request and waits costs a descriptor in the gate, never a worker, and the oldest such client is closed
# when too many wait. A worker then has IO_TIMEOUT per read or write.
WORKERS = 4
MAX_WAITING = 256
HEAD_TIMEOUT = 10.0
POLL_SECONDS = 0.5  # how soon the gate notices expired waits and a stop
IO_TIMEOUT = 10.0
MAX_HEAD_BYTES = 16 << 10
BACKLOG = 128


class _RequestGate:
    """One thread that holds accepted connections until their request head is complete, then passes
    them on. epoll, edge-triggered: each arrival of data wakes it once, and it only peeks (the
    handler reads the request itself)."""

    def __init__(self, dispatch: Callable[[socket.socket, Any], None]) -> None:
        self._dispatch = dispatch
        self._epoll = select.epoll()
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[socket.socket, Any, float]] = {}  # by fd, oldest first
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="btrfs-csi-metrics-gate", daemon=True)
        self._thread.start()

    def add(self, connection: socket.socket, address: Any) -> None:
        with self._lock:
            if self._closed:
                connection.close()
                return
            if len(self._waiting) >= MAX_WAITING:
                self._drop(next(iter(self._waiting)))  # the one that has waited longest
            fd = connection.fileno()
            self._waiting[fd] = (connection, address, time.monotonic() + HEAD_TIMEOUT)
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for fd in list(self._waiting):
                self._drop(fd)
        self._thread.join(2 * POLL_SECONDS)
        self._epoll.close()

    def _drop(self, fd: int) -> None:
        """Forgets a waiting connection and closes it. Needs the lock."""
        connection, _, _ = self._waiting.pop(fd)
        with contextlib.suppress(OSError):
            self._epoll.unregister(fd)
        connection.close()

    def _run(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                self._expire(time.monotonic())
            for fd, _ in self._epoll.poll(POLL_SECONDS):
                with self._lock:
                    entry = self._waiting.get(fd)
                    if entry is None or not self._ready(fd, entry[0]):
                        continue
                    del self._waiting[fd]
                    self._epoll.unregister(fd)
                self._dispatch(entry[0], entry[1])

    def _expire(self, now: float) -> None:
        while self._waiting:
            fd, (_, _, deadline) = next(iter(self._waiting.items()))
            if deadline > now:
                return
            self._drop(fd)

    def _ready(self, fd: int, connection: socket.socket) -> bool:
        """Whether the head has arrived; a connection that closed, failed or sent too much is dropped."""
        try:
            head = connection.recv(MAX_HEAD_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            head = b""
        if b"\n\r\n" in head or b"\n\n" in head:
            return True
        if not head or len(head) >= MAX_HEAD_BYTES:
            self._drop(fd)
        return False


class _RequestHandler(WSGIRequestHandler):
    """The stdlib's WSGI request handler, its access and error lines sent to this module's log at
    DEBUG: it writes them raw to stderr, which holds the driver's (JSON) log."""

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics client %s: " + format, self.client_address[0], *args)


class _Server(WSGIServer):
    """wsgiref's server with a bounded set of workers behind the request gate."""

    request_queue_size = BACKLOG

    def __init__(self, address: tuple[str, int], app: Callable[..., Iterable[bytes]]) -> None:
        # Before binding: a failed bind calls server_close, which stops them.
        self._workers = futures.ThreadPoolExecutor(WORKERS, thread_name_prefix="btrfs-csi-metrics")
        self._gate = _RequestGate(self._hand_over)
        super().__init__(address, _RequestHandler)
        self.set_app(app)

    def process_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(IO_TIMEOUT)
        self._gate.add(request, client_address)

    def _hand_over(self, request: socket.socket, client_address: Any) -> None:
        self._workers.submit(self._handle, request, client_address)

    def _handle(self, request: socket.socket, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("metrics request from %s failed", client_address, exc_info=True)  # a client's problem

    def server_close(self) -> None:
        super().server_close()
        self._gate.close()
        self._workers.shutdown(wait=False, cancel_futures=True)


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


def start_metrics_server(address: tuple[str, int], registry: CollectorRegistry) -> MetricsServer:
    """Serves `registry` at http://HOST:PORT/metrics until `stop()`; port 0 picks a free port.

    `address` is (host, port) as csi.config parses --metrics-address.
    """
    host, port = address
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("_MetricsServer", (_Server,), {"address_family": family})
    httpd = server_class((host, port), metrics_app(registry))
    thread = threading.Thread(target=httpd.serve_forever, name="btrfs-csi-metrics", daemon=True)
    thread.start()
    return MetricsServer(httpd, thread)
