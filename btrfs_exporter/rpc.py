"""RPC metrics: a gRPC server interceptor that times every call by method and final status code.

The status code of a call is read where it is final, not where an exception passes by. The csi
server maps core errors to statuses in its own interceptor (context.abort), and unhandled exceptions
become UNKNOWN inside grpcio, so this interceptor:

- wraps the method's behaviour to time it and to see whether it raised (context.abort raises too);
- registers a termination callback (`context.add_callback`), which grpcio runs once the status has
  been sent; there `context.code()` holds what an abort or set_code chose, whichever interceptor
  did it and in whichever order the interceptors run. No code means OK when the behaviour returned
  and UNKNOWN when it raised (what grpcio sends for an unhandled exception).
- A call that ends before its behaviour does (the client cancelled, or the deadline passed) is
  recorded as CANCELLED or DEADLINE_EXCEEDED when the behaviour finishes.

Put it first in `grpc.server(interceptors=[...])` all the same: then the duration covers the other
interceptors too.
"""

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

import grpc
from prometheus_client import CollectorRegistry, Gauge, Histogram

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
    """The RPC metric objects, registered in one registry."""

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


class _HasCode(Protocol):
    def code(self) -> grpc.StatusCode | None: ...


def _context_code(context: grpc.ServicerContext) -> grpc.StatusCode | None:
    reader = getattr(context, "code", None)  # ServicerContext.code() exists since grpcio 1.38
    if reader is None:
        return None
    return cast(_HasCode, context).code()


class _Call:
    """One call in progress: recorded once, by whichever of behaviour end and termination is last."""

    def __init__(self, metrics: RpcMetrics, method: str, context: grpc.ServicerContext) -> None:
        self._metrics = metrics
        self._method = method
        self._context = context
        self._lock = threading.Lock()
        self._start = time.perf_counter()
        self._duration: float | None = None  # set when the behaviour has finished
        self._raised = False
        self._early_code: grpc.StatusCode | None = None  # set when the call ended before the behaviour

    def begin(self) -> None:
        self._metrics.in_flight.inc()
        if not self._context.add_callback(self._terminated):
            self._early_code = grpc.StatusCode.CANCELLED

    def end(self, raised: bool) -> None:
        self._metrics.in_flight.dec()
        with self._lock:
            self._duration = time.perf_counter() - self._start
            self._raised = raised
            early = self._early_code
        if early is not None:
            self._observe(early.name)

    def _terminated(self) -> None:
        with self._lock:
            if self._duration is None:
                # The call is over but the behaviour still runs: the client went away or the deadline
                # passed. Recorded when the behaviour finishes.
                remaining = self._context.time_remaining()
                expired = remaining is not None and remaining <= 0
                self._early_code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
                return
        code = _context_code(self._context)
        if code is None:
            code = grpc.StatusCode.UNKNOWN if self._raised else grpc.StatusCode.OK
        self._observe(code.name)

    def _observe(self, code: str) -> None:
        assert self._duration is not None
        self._metrics.duration.labels(self._method, code).observe(self._duration)


def _timed(
    behavior: Callable[[Any, grpc.ServicerContext], Any], metrics: RpcMetrics, method: str
) -> Callable[[Any, grpc.ServicerContext], Any]:
    def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
        call = _Call(metrics, method, context)
        call.begin()
        raised = True
        try:
            response = behavior(request, context)
            raised = False
            return response
        finally:
            call.end(raised)

    return wrapped


class RpcMetricsInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Records btrfs_csi_rpc_duration_seconds{method, code} and btrfs_csi_rpc_in_flight."""

    def __init__(self, metrics: RpcMetrics) -> None:
        self._metrics = metrics

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],  # type: ignore[type-arg]
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:  # type: ignore[type-arg]
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # unknown method (grpcio answers UNIMPLEMENTED), or a kind CSI never uses
        method = handler_call_details.method.rsplit("/", 1)[-1]
        return grpc.unary_unary_rpc_method_handler(
            _timed(handler.unary_unary, self._metrics, method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
