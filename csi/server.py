"""The gRPC server: bounded worker pool, a bounded queue per connection, message limits, the unix socket,
and the one interceptor: it maps errors to status codes, logs one line per RPC and reports each RPC's
method, final code and duration to an `RpcObserver` (the exporter's RPC metrics; this package imports
nothing of the exporter).
"""

import errno
import logging
import os
import socket
import stat
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, ParamSpec, Protocol, TypeVar

import grpc

from csi.errors import status_for, unavailable
from csi.logging import RPC_LOGGER, request_fields
from csi.pb import csi_pb2_grpc

log = logging.getLogger(RPC_LOGGER)

MAX_MESSAGE_BYTES = 4 << 20  # CSI messages are a few KiB; anything near this is not a CO talking
# Load is queued, never refused as RESOURCE_EXHAUSTED: grpc's own maximum_concurrent_rpcs answers that,
# and the external-provisioner reads it as "no space on this node" and reschedules the pod. Up to this
# many RPCs per worker wait for a worker; beyond that the queue is full and new RPCs get UNAVAILABLE at
# once (the CO retries with back-off). The sidecars send at most a few hundred calls at once.
QUEUED_RPCS_PER_WORKER = 64
# Polled by the CO (liveness probe, discovery, kubelet volume stats, provisioner capacity tracking):
# logged at DEBUG when they succeed, so the INFO log shows what changed. Failures are always WARNING.
QUIET_METHODS = frozenset(
    {
        "Probe",
        "GetPluginInfo",
        "GetPluginCapabilities",
        "ControllerGetCapabilities",
        "NodeGetCapabilities",
        "NodeGetInfo",
        "NodeGetVolumeStats",
        "GetCapacity",
    }
)

Behaviour = Callable[[Any, grpc.ServicerContext], Any]
P = ParamSpec("P")
T = TypeVar("T")


_overflow = threading.local()  # `active` is True on the thread that answers RPCs beyond the queue


def _on_overflow_thread() -> None:
    _overflow.active = True


class QueueingExecutor(futures.ThreadPoolExecutor):
    """The RPC workers and a bounded queue before them. An RPC beyond the queue runs on a thread of its
    own instead, where the error-mapping interceptor answers UNAVAILABLE without doing any work."""

    def __init__(self, max_workers: int, max_queued: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="csi-rpc")
        self._slots = threading.BoundedSemaphore(max_workers + max_queued)
        self._overflow = futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="csi-rpc-overflow", initializer=_on_overflow_thread
        )

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> futures.Future[T]:
        if not self._slots.acquire(blocking=False):
            return self._overflow.submit(fn, *args, **kwargs)
        try:
            future = super().submit(fn, *args, **kwargs)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait, cancel_futures=cancel_futures)
        self._overflow.shutdown(wait, cancel_futures=cancel_futures)


class ServeError(Exception):
    """The server cannot start (socket path unusable); the message is one line."""


class RpcObserver(Protocol):
    """Told of every CSI RPC by the interceptor; `code` is the name of the status the client got."""

    def started(self, method: str) -> None: ...

    def finished(self, method: str, code: str, seconds: float) -> None: ...


class _Unobserved:
    def started(self, method: str) -> None:
        pass

    def finished(self, method: str, code: str, seconds: float) -> None:
        pass


class ErrorMappingInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Turns exceptions into CSI status codes (csi.errors), logs each RPC once with its duration, and
    reports it to the observer."""

    def __init__(self, observer: RpcObserver) -> None:
        self._observer = observer
        # Each method's wrapped handler, made at its first call: the services' handlers never change,
        # and making it anew cost every call its share of the server's CPU.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}  # type: ignore[type-arg]

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],  # type: ignore[type-arg]
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:  # type: ignore[type-arg]
        wrapped = self._wrapped.get(handler_call_details.method)
        if wrapped is not None:
            return wrapped
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # unknown method: grpc answers UNIMPLEMENTED itself (CSI has no streams)
        method = handler_call_details.method.rsplit("/", 1)[-1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            _mapped(method, handler.unary_unary, self._observer),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        self._wrapped[handler_call_details.method] = wrapped
        return wrapped


def _mapped(method: str, inner: Behaviour, observer: RpcObserver) -> Behaviour:
    def behaviour(request: Any, context: grpc.ServicerContext) -> Any:
        start = time.monotonic()
        observer.started(method)
        code = grpc.StatusCode.UNKNOWN  # what grpc sends if something other than an Exception escapes
        try:
            try:
                if getattr(_overflow, "active", False):
                    raise unavailable(f"the driver is busy (workers and queue full): retry {method} later")
                response = inner(request, context)
            except Exception as exc:
                mapped = status_for(exc)
                if mapped is None:
                    code, message = grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
                    _log_rpc(method, request, code, start, message, exc)  # the one traceback for this failure
                else:
                    code, message = mapped
                    _log_rpc(method, request, code, start, message)
                context.abort(code, message)
            code = _ended_code(context)
            _log_rpc(method, request, code, start)
            return response
        finally:
            observer.finished(method, code.name, time.monotonic() - start)

    return behaviour


def _ended_code(context: grpc.ServicerContext) -> grpc.StatusCode:
    """OK, unless the call ended while the servicer worked: the deadline passed or the client went away
    (the client got that code, and the response goes nowhere). The deadline is read first: the
    cancellation it causes reaches is_active() only when grpc's own thread has seen it."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= 0:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.OK if context.is_active() else grpc.StatusCode.CANCELLED


def _log_rpc(
    method: str,
    request: Any,
    code: grpc.StatusCode,
    start: float,
    message: str = "",
    exc: BaseException | None = None,
) -> None:
    if exc is not None:
        level = logging.ERROR
    elif code is grpc.StatusCode.OK:
        level = logging.DEBUG if method in QUIET_METHODS else logging.INFO
    else:
        level = logging.WARNING
    if not log.isEnabledFor(level):
        return  # the liveness probe's Probe every few seconds, at INFO: no fields to build
    fields: dict[str, Any] = {"method": method, "code": code.name}
    fields["duration_ms"] = round((time.monotonic() - start) * 1000, 3)
    fields.update(request_fields(request))
    if message:
        fields["error"] = message
    log.log(level, method, extra={"fields": fields}, exc_info=exc)


def build_server(
    identity: csi_pb2_grpc.IdentityServicer,
    controller: csi_pb2_grpc.ControllerServicer,
    node: csi_pb2_grpc.NodeServicer,
    *,
    max_workers: int,
    observer: RpcObserver | None = None,
) -> grpc.Server:
    """The server with the three CSI services; `observer` (e.g. RPC metrics) is told of every RPC."""
    server = _bounded_server(max_workers, observer or _Unobserved())
    csi_pb2_grpc.add_IdentityServicer_to_server(identity, server)
    csi_pb2_grpc.add_ControllerServicer_to_server(controller, server)
    csi_pb2_grpc.add_NodeServicer_to_server(node, server)
    return server


def build_peer_server(
    peer: grpc.GenericRpcHandler,  # type: ignore[type-arg]
    *,
    max_workers: int,
) -> grpc.Server:
    """The server of the peer service, with the same bounds and error mapping; its calls are not CSI
    calls, so no RPC observer counts them."""
    server = _bounded_server(max_workers, _Unobserved())
    server.add_generic_rpc_handlers((peer,))
    return server


def _bounded_server(max_workers: int, observer: RpcObserver) -> grpc.Server:
    return grpc.server(
        QueueingExecutor(max_workers, max_queued=max_workers * QUEUED_RPCS_PER_WORKER),
        interceptors=[ErrorMappingInterceptor(observer)],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            # A TCP port another process listens on is refused, not shared: with gRPC's default
            # SO_REUSEPORT a second driver took half of the peers' connections without a word.
            ("grpc.so_reuseport", 0),
        ],
    )


def _socket_in_use(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except OSError:
            return False
        return True


def _make_directories(directory: Path) -> None:
    """Makes the missing directories of a path, none writable by group or others whatever the umask:
    whoever may write in the socket's directory may replace the socket with one of their own."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for made in reversed(missing):
        made.mkdir(mode=0o755, exist_ok=True)


def prepare_socket_path(path: Path) -> None:
    """Makes the socket's directory and removes a stale socket; refuses to replace anything else."""
    _make_directories(path.parent)
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ServeError(f"{path} exists and is not a socket; refusing to replace it")
    if _socket_in_use(path):
        raise ServeError(f"{path} is in use by another running server")
    path.unlink()


def bind_unix_socket(server: grpc.Server, path: Path) -> None:
    """Binds the server to a unix socket that only its owner (root: the CO's sidecars) may use.

    The umask makes the socket 0600 from its creation, so there is no moment it is open to others.
    """
    prepare_socket_path(path)
    old_umask = os.umask(0o177)
    try:
        server.add_insecure_port(f"unix:{path}")
    except RuntimeError as exc:
        raise ServeError(f"cannot bind the socket {path}: {exc}") from None
    finally:
        os.umask(old_umask)
    try:
        os.chmod(path, 0o600)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
