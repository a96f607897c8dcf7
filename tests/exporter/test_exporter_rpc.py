"""The RPC interceptor against a real gRPC server with a tiny servicer of its own (no CSI code)."""

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from btrfs_exporter.rpc import RpcMetrics, RpcMetricsInterceptor

SERVICE = "test.v1.Tiny"


class CoreError(Exception):
    """What the core raises; the error-mapping interceptor turns it into NOT_FOUND."""


class ErrorMapping(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Like the csi server's: catches core errors and aborts with a status code."""

    def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary

        def mapped(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                response: bytes = behavior(request, context)
                return response
            except CoreError as exc:
                context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

        return grpc.unary_unary_rpc_method_handler(mapped)


class Tiny:
    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def do(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"abort":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
        if request == b"core-error":
            raise CoreError("volume x does not exist")
        if request == b"crash":
            raise RuntimeError("a bug")
        if request == b"set-code":
            context.set_code(grpc.StatusCode.ALREADY_EXISTS)
            context.set_details("exists")
            return b""
        if request == b"block":
            self.entered.set()
            self.release.wait(10)
        if request == b"sleep":
            time.sleep(0.6)
        return b"done"

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from (b"1", b"2", b"3")

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Do": grpc.unary_unary_rpc_method_handler(self.do),
                "Stream": grpc.unary_stream_rpc_method_handler(self.stream),
            },
        )


class Harness:
    def __init__(self, order: str) -> None:
        self.registry = CollectorRegistry()
        self.servicer = Tiny()
        metrics = RpcMetricsInterceptor(RpcMetrics(self.registry))
        interceptors = [metrics, ErrorMapping()] if order == "metrics-first" else [ErrorMapping(), metrics]
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), interceptors=interceptors)
        self.server.add_generic_rpc_handlers((self.servicer.handler(),))
        port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")

    def call(self, request: bytes, timeout: float = 10) -> grpc.StatusCode:
        try:
            self.method("Do")(request, timeout=timeout)
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            return code
        return grpc.StatusCode.OK

    def method(self, name: str) -> grpc.UnaryUnaryMultiCallable:  # type: ignore[type-arg]
        return self.channel.unary_unary(f"/{SERVICE}/{name}", None, None)

    def count(self, method: str, code: str) -> float:
        value = self.registry.get_sample_value(
            "btrfs_csi_rpc_duration_seconds_count", {"method": method, "code": code}
        )
        return value or 0.0

    def in_flight(self) -> float:
        value = self.registry.get_sample_value("btrfs_csi_rpc_in_flight")
        assert value is not None
        return value

    def stop(self) -> None:
        self.channel.close()
        self.server.stop(grace=None).wait(10)


@pytest.fixture(params=["metrics-first", "metrics-last"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = Harness(request.param)
    try:
        yield h
    finally:
        h.stop()


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Termination callbacks run on grpcio's thread just after the client has its answer."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@pytest.mark.parametrize(
    ("request_bytes", "code"),
    [
        (b"ok", grpc.StatusCode.OK),
        (b"abort", grpc.StatusCode.INVALID_ARGUMENT),
        (b"core-error", grpc.StatusCode.NOT_FOUND),
        (b"crash", grpc.StatusCode.UNKNOWN),
        (b"set-code", grpc.StatusCode.ALREADY_EXISTS),
    ],
)
def test_the_recorded_code_is_what_the_client_got(
    harness: Harness, request_bytes: bytes, code: grpc.StatusCode
) -> None:
    assert harness.call(request_bytes) == code
    eventually(lambda: harness.count("Do", code.name) == 1)
    time.sleep(0.05)
    samples = [
        s
        for family in harness.registry.collect()
        if family.name == "btrfs_csi_rpc_duration_seconds"
        for s in family.samples
        if s.name.endswith("_count")
    ]
    assert [(s.labels, s.value) for s in samples] == [({"method": "Do", "code": code.name}, 1.0)]
    assert harness.in_flight() == 0


def test_in_flight_counts_calls_being_served(harness: Harness) -> None:
    result: list[grpc.StatusCode] = []
    caller = threading.Thread(target=lambda: result.append(harness.call(b"block")))
    caller.start()
    try:
        assert harness.servicer.entered.wait(10)
        assert harness.in_flight() == 1
    finally:
        harness.servicer.release.set()
        caller.join(10)
    assert result == [grpc.StatusCode.OK]
    eventually(lambda: harness.count("Do", "OK") == 1)
    assert harness.in_flight() == 0


def test_a_deadline_that_passes_mid_call_is_recorded_as_such(harness: Harness) -> None:
    assert harness.call(b"sleep", timeout=0.2) == grpc.StatusCode.DEADLINE_EXCEEDED
    eventually(lambda: harness.count("Do", "DEADLINE_EXCEEDED") == 1)
    (bucket_sum,) = [
        s.value
        for family in harness.registry.collect()
        for s in family.samples
        if s.name == "btrfs_csi_rpc_duration_seconds_sum"
    ]
    assert bucket_sum >= 0.5  # the time the server spent, not the client's deadline
    assert harness.in_flight() == 0


def test_streaming_and_unknown_methods_pass_through_untimed(harness: Harness) -> None:
    # Every CSI RPC is unary; anything else is served as it is, without metrics.
    replies = list(harness.channel.unary_stream(f"/{SERVICE}/Stream", None, None)(b"", timeout=10))
    assert replies == [b"1", b"2", b"3"]
    time.sleep(0.05)
    assert harness.count("Stream", "OK") == 0
    with pytest.raises(grpc.RpcError) as raised:
        harness.method("Missing")(b"", timeout=10)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    time.sleep(0.05)
    assert harness.count("Missing", "UNIMPLEMENTED") == 0  # no handler, nothing to time


def test_many_concurrent_calls_are_all_counted(harness: Harness) -> None:
    requests = [b"ok", b"core-error", b"crash", b"abort"] * 25
    with futures.ThreadPoolExecutor(max_workers=8) as pool:
        codes = list(pool.map(harness.call, requests))
    assert codes.count(grpc.StatusCode.NOT_FOUND) == 25
    eventually(
        lambda: (
            [harness.count("Do", c) for c in ("OK", "NOT_FOUND", "UNKNOWN", "INVALID_ARGUMENT")] == [25.0] * 4
        )
    )
    assert harness.in_flight() == 0
