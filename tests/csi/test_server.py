"""The server around the servicers: the error-mapping interceptor, one log line per RPC with secrets left
out, the metrics hook, try-locks seen from a client, and the unix socket. On the fake pool: no root."""

import io
import json
import logging
import os
import socket
import stat
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from prometheus_client import CollectorRegistry

from btrfs_core.pool import Pool
from btrfs_exporter.rpc import RpcMetrics
from csi import logging as csi_logging
from csi.__main__ import start
from csi.config import Config
from csi.pb import csi_pb2, csi_pb2_grpc
from csi.server import RpcObserver, ServeError, prepare_socket_path
from tests.csi.conftest import Client, MiB, code_of, error_of, mount_capability


class PoolWrapper:
    """A pool whose chosen methods are replaced, the rest passed through."""

    def __init__(self, inner: Pool, **overrides: Callable[..., Any]) -> None:
        self._inner = inner
        self._overrides = overrides

    def __getattr__(self, name: str) -> Any:
        return self._overrides.get(name) or getattr(self._inner, name)


@pytest.fixture
def fake_pool(tmp_path: Path) -> Pool:
    from btrfs_core.fake import FakeBackend

    root = tmp_path / "pool"
    root.mkdir()
    return Pool.open(root, backend=FakeBackend(root))


class LogCapture:
    """The driver's logging set up on a buffer, in text or JSON."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def use(self, fmt: str) -> None:
        csi_logging.setup("DEBUG", fmt, self.buffer)

    def lines(self) -> list[str]:
        return self.buffer.getvalue().splitlines()


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    yield LogCapture()
    for name in ("csi", "btrfs_core"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def serve(
    pool: Any, socket_dir: Path, observer: RpcObserver | None = None
) -> tuple[Client, Callable[[], None]]:
    config = Config(socket_path=socket_dir / "csi.sock", node_id="node-1", pool=pool.root, max_workers=4)
    driver = start(config, cast(Pool, pool), observer)
    channel = grpc.insecure_channel(config.endpoint)
    client = Client(
        csi_pb2_grpc.IdentityStub(channel),
        csi_pb2_grpc.ControllerStub(channel),
        csi_pb2_grpc.NodeStub(channel),
        driver,
    )

    def stop() -> None:
        channel.close()
        driver.stop(0)

    return client, stop


def test_socket_is_owner_only_and_removed_at_stop(fake_pool: Pool, socket_dir: Path) -> None:
    client, stop = serve(fake_pool, socket_dir)
    path = socket_dir / "csi.sock"
    mode = path.stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    client.identity.Probe(csi_pb2.ProbeRequest())
    stop()
    assert not path.exists()


def test_stale_socket_is_replaced(fake_pool: Pool, socket_dir: Path) -> None:
    path = socket_dir / "csi.sock"
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(path))  # a socket file nobody listens on: what a crashed driver leaves
    client, stop = serve(fake_pool, socket_dir)
    try:
        assert client.identity.Probe(csi_pb2.ProbeRequest()).ready.value
    finally:
        stop()


def test_live_socket_or_other_file_is_not_replaced(fake_pool: Pool, socket_dir: Path) -> None:
    path = socket_dir / "csi.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(ServeError, match="in use"):
            prepare_socket_path(path)
    path.unlink()
    path.write_text("precious")
    with pytest.raises(ServeError, match="not a socket"):
        prepare_socket_path(path)
    assert path.read_text() == "precious"
    prepare_socket_path(socket_dir / "new" / "dir" / "csi.sock")  # parents are made
    assert (socket_dir / "new" / "dir").is_dir()


def test_bug_becomes_internal_with_one_traceback(fake_pool: Pool, socket_dir: Path, logs: LogCapture) -> None:
    logs.use("text")

    def broken(volume_id: str) -> Any:
        raise RuntimeError("the core tripped")

    client, stop = serve(PoolWrapper(fake_pool, get_volume=broken), socket_dir)
    try:
        request = csi_pb2.ControllerGetVolumeRequest(volume_id="pvc-1")
        with pytest.raises(grpc.RpcError) as exc:
            client.controller.ControllerGetVolume(request)
        assert exc.value.code() == grpc.StatusCode.INTERNAL
        assert "the core tripped" in (exc.value.details() or "")
    finally:
        stop()
    text = "\n".join(logs.lines())
    assert text.count("Traceback (most recent call last)") == 1
    assert "ERROR csi.rpc ControllerGetVolume code=INTERNAL" in text


def test_one_json_line_per_rpc_without_secrets(fake_pool: Pool, socket_dir: Path, logs: LogCapture) -> None:
    logs.use("json")
    client, stop = serve(fake_pool, socket_dir)
    try:
        request = csi_pb2.CreateVolumeRequest(
            name="pvc-1",
            capacity_range=csi_pb2.CapacityRange(required_bytes=2 * MiB),
            volume_capabilities=[mount_capability(mount_flags=["password=hunter2"])],
            secrets={"password": "hunter2"},
        )
        assert code_of(client.controller.CreateVolume, request) == grpc.StatusCode.INVALID_ARGUMENT
        request.volume_capabilities[0].mount.ClearField("mount_flags")
        client.controller.CreateVolume(request)
        client.identity.Probe(csi_pb2.ProbeRequest())
    finally:
        stop()
    lines = logs.lines()
    assert "hunter2" not in "\n".join(lines)
    entries = [json.loads(line) for line in lines]
    rpcs = [entry for entry in entries if entry["logger"] == "csi.rpc"]
    assert [(e["method"], e["code"], e["name"]) for e in rpcs if e["method"] == "CreateVolume"] == [
        ("CreateVolume", "INVALID_ARGUMENT", "pvc-1"),
        ("CreateVolume", "OK", "pvc-1"),
    ]
    assert all(isinstance(e["duration_ms"], float) for e in rpcs)
    probe = [e for e in rpcs if e["method"] == "Probe"]
    assert probe and probe[0]["level"] == "DEBUG"  # the liveness probe does not flood the log


class Observed:
    """The RPC metrics as the driver wires them (btrfs_exporter.rpc), in a registry of their own, and a
    semaphore released after each report of a finished call."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = RpcMetrics(self.registry)
        self.reported = threading.Semaphore(0)

    def started(self, method: str) -> None:
        self.metrics.started(method)

    def finished(self, method: str, code: str, seconds: float) -> None:
        self.metrics.finished(method, code, seconds)
        self.reported.release()

    def count(self, method: str, code: str) -> float:
        value = self.registry.get_sample_value(
            "btrfs_csi_rpc_duration_seconds_count", {"method": method, "code": code}
        )
        return value or 0.0

    def counts(self) -> dict[tuple[str, str], float]:
        return {
            (s.labels["method"], s.labels["code"]): s.value
            for family in self.registry.collect()
            if family.name == "btrfs_csi_rpc_duration_seconds"
            for s in family.samples
            if s.name.endswith("_count")
        }

    def seconds(self) -> float:
        return sum(
            s.value
            for family in self.registry.collect()
            for s in family.samples
            if s.name == "btrfs_csi_rpc_duration_seconds_sum"
        )

    def in_flight(self) -> float:
        value = self.registry.get_sample_value("btrfs_csi_rpc_in_flight")
        assert value is not None
        return value


def test_the_observer_is_told_every_rpc_and_the_code_the_client_got(
    fake_pool: Pool, socket_dir: Path
) -> None:
    observed = Observed()

    def broken(volume_id: str) -> Any:
        raise RuntimeError("a bug")

    client, stop = serve(PoolWrapper(fake_pool, get_volume=broken), socket_dir, observed)
    try:
        codes = [
            code_of(client.identity.Probe, csi_pb2.ProbeRequest()),
            code_of(client.controller.DeleteVolume, csi_pb2.DeleteVolumeRequest()),
            code_of(client.node.NodeStageVolume, csi_pb2.NodeStageVolumeRequest()),
            code_of(client.controller.ControllerGetVolume, csi_pb2.ControllerGetVolumeRequest(volume_id="v")),
            code_of(client.controller.GetSnapshot, csi_pb2.GetSnapshotRequest(snapshot_id="snapshot-none")),
        ]
    finally:
        stop()
    assert codes == [
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.NOT_FOUND,
    ]
    assert observed.counts() == {
        ("Probe", "OK"): 1.0,
        ("DeleteVolume", "INVALID_ARGUMENT"): 1.0,
        ("NodeStageVolume", "UNIMPLEMENTED"): 1.0,
        ("ControllerGetVolume", "INTERNAL"): 1.0,
        ("GetSnapshot", "NOT_FOUND"): 1.0,
    }
    assert observed.in_flight() == 0


@pytest.mark.parametrize(
    ("method", "request_type"),
    # One of each service; test_conformance_controller.py and test_conformance_node.py try them all.
    [
        ("ControllerExpandVolume", csi_pb2.ControllerExpandVolumeRequest),
        ("NodeUnstageVolume", csi_pb2.NodeUnstageVolumeRequest),
    ],
)
def test_rpcs_the_driver_leaves_out_are_unimplemented_and_logged_once_without_traceback(
    fake_pool: Pool, socket_dir: Path, logs: LogCapture, method: str, request_type: type
) -> None:
    logs.use("json")
    client, stop = serve(fake_pool, socket_dir)
    try:
        service = client.node if method.startswith("Node") else client.controller
        error = error_of(getattr(service, method), request_type(volume_id="pvc-1"))
    finally:
        stop()
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "does not implement" in (error.details() or "")
    entries = [json.loads(line) for line in logs.lines()]
    rpcs = [e for e in entries if e["logger"] == "csi.rpc" and e["method"] == method]
    assert [(e["code"], e["level"]) for e in rpcs] == [("UNIMPLEMENTED", "WARNING")]
    assert "Traceback" not in logs.buffer.getvalue()


def test_in_flight_counts_calls_being_served(fake_pool: Pool, socket_dir: Path) -> None:
    observed = Observed()
    entered, release = threading.Event(), threading.Event()

    def slow_create(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(30)
        return fake_pool.create_volume(*args, **kwargs)

    client, stop = serve(PoolWrapper(fake_pool, create_volume=slow_create), socket_dir, observed)
    try:
        call = client.controller.CreateVolume.future(request("slow"), timeout=60)
        assert entered.wait(30)
        assert observed.in_flight() == 1
        release.set()
        assert outcome(call) == grpc.StatusCode.OK
    finally:
        release.set()
        stop()
    assert observed.in_flight() == 0 and observed.count("CreateVolume", "OK") == 1


def test_a_deadline_that_passes_mid_call_is_recorded_as_such(fake_pool: Pool, socket_dir: Path) -> None:
    observed = Observed()
    release = threading.Event()
    worked: list[float] = []

    def slow_create(*args: Any, **kwargs: Any) -> Any:
        entered = time.monotonic()
        release.wait(30)
        # The server's deadline is at most 0.2 s after this call arrived: past it before returning.
        time.sleep(max(0.0, entered + 0.3 - time.monotonic()))
        worked.append(time.monotonic() - entered)
        return fake_pool.create_volume(*args, **kwargs)

    client, stop = serve(PoolWrapper(fake_pool, create_volume=slow_create), socket_dir, observed)
    try:
        with pytest.raises(grpc.RpcError) as late:
            client.controller.CreateVolume(request("slow"), timeout=0.2)
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()  # the servicer finishes only now, after the client gave up
        assert observed.reported.acquire(timeout=30)
    finally:
        release.set()
        stop()
    assert observed.counts() == {("CreateVolume", "DEADLINE_EXCEEDED"): 1.0}
    assert observed.seconds() >= worked[0]  # the time the server spent, not the client's deadline
    assert observed.in_flight() == 0


def test_unknown_methods_are_not_observed(fake_pool: Pool, socket_dir: Path) -> None:
    observed = Observed()
    _, stop = serve(fake_pool, socket_dir, observed)
    try:
        with grpc.insecure_channel(f"unix://{socket_dir / 'csi.sock'}") as channel:
            call = channel.unary_unary("/csi.v1.Controller/Missing", None, None)
            with pytest.raises(grpc.RpcError) as missing:
                call(b"", timeout=10)
    finally:
        stop()
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert observed.counts() == {}  # no handler, nothing to time


def test_many_concurrent_calls_are_all_counted(fake_pool: Pool, socket_dir: Path) -> None:
    observed = Observed()
    client, stop = serve(fake_pool, socket_dir, observed)
    calls: list[tuple[Callable[..., Any], Any]] = [
        (client.identity.Probe, csi_pb2.ProbeRequest()),
        (client.controller.DeleteVolume, csi_pb2.DeleteVolumeRequest()),
        (client.controller.GetSnapshot, csi_pb2.GetSnapshotRequest(snapshot_id="snapshot-none")),
        (client.node.NodeStageVolume, csi_pb2.NodeStageVolumeRequest()),
    ] * 25
    try:
        with futures.ThreadPoolExecutor(max_workers=8) as callers:
            codes = list(callers.map(lambda call: code_of(*call), calls))
    finally:
        stop()
    assert Counter(codes) == {
        grpc.StatusCode.OK: 25,
        grpc.StatusCode.INVALID_ARGUMENT: 25,
        grpc.StatusCode.NOT_FOUND: 25,
        grpc.StatusCode.UNIMPLEMENTED: 25,
    }
    assert observed.counts() == {
        ("Probe", "OK"): 25.0,
        ("DeleteVolume", "INVALID_ARGUMENT"): 25.0,
        ("GetSnapshot", "NOT_FOUND"): 25.0,
        ("NodeStageVolume", "UNIMPLEMENTED"): 25.0,
    }
    assert observed.in_flight() == 0


def test_concurrent_call_on_the_same_volume_is_aborted_not_queued(fake_pool: Pool, socket_dir: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_create(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "slow":
            entered.set()
            release.wait(10)
        return fake_pool.create_volume(name, *args, **kwargs)

    client, stop = serve(PoolWrapper(fake_pool, create_volume=slow_create), socket_dir)
    try:
        results: list[grpc.StatusCode] = []
        first = threading.Thread(
            target=lambda: results.append(code_of(client.controller.CreateVolume, request("slow")))
        )
        first.start()
        assert entered.wait(10)
        assert code_of(client.controller.CreateVolume, request("slow")) == grpc.StatusCode.ABORTED
        assert code_of(client.controller.DeleteVolume, csi_pb2.DeleteVolumeRequest(volume_id="slow")) == (
            grpc.StatusCode.ABORTED
        )
        assert code_of(client.controller.CreateVolume, request("other")) == grpc.StatusCode.OK  # others go on
        release.set()
        first.join(10)
        assert results == [grpc.StatusCode.OK]
        assert code_of(client.controller.CreateVolume, request("slow")) == grpc.StatusCode.OK  # released
    finally:
        release.set()
        stop()


def request(name: str) -> csi_pb2.CreateVolumeRequest:
    return csi_pb2.CreateVolumeRequest(
        name=name,
        capacity_range=csi_pb2.CapacityRange(required_bytes=2 * MiB),
        volume_capabilities=[mount_capability()],
    )


def test_probe_fails_when_the_pool_breaks(
    fake_pool: Pool, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def gone() -> Any:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fake_pool.stats, "quota_status", gone)
    client, stop = serve(fake_pool, socket_dir)
    try:
        assert code_of(client.identity.Probe, csi_pb2.ProbeRequest()) == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        stop()


def test_unknown_service_is_unimplemented(fake_pool: Pool, socket_dir: Path) -> None:
    _, stop = serve(fake_pool, socket_dir)
    try:
        channel = grpc.insecure_channel(f"unix://{socket_dir / 'csi.sock'}")
        call = channel.unary_unary(
            "/csi.v1.GroupController/GroupControllerGetCapabilities",
            request_serializer=csi_pb2.GroupControllerGetCapabilitiesRequest.SerializeToString,
            response_deserializer=csi_pb2.GroupControllerGetCapabilitiesResponse.FromString,
        )
        assert code_of(call, csi_pb2.GroupControllerGetCapabilitiesRequest()) == grpc.StatusCode.UNIMPLEMENTED
        channel.close()
    finally:
        stop()
    assert not os.path.exists(socket_dir / "csi.sock")


@pytest.mark.kernel
def test_overload_is_queued_never_resource_exhausted(kernel_pool: Pool, socket_dir: Path) -> None:
    """160 CreateVolume at once over the real socket (4 workers): each is served in turn. RESOURCE_EXHAUSTED
    would tell the external-provisioner the node has no room, and it would reschedule the pod."""
    client, stop = serve(kernel_pool, socket_dir)
    try:
        calls = [client.controller.CreateVolume.future(request(f"load-{i}"), timeout=120) for i in range(160)]
        codes = [outcome(call) for call in calls]
    finally:
        stop()
    assert Counter(codes) == {grpc.StatusCode.OK: 160}
    assert len(kernel_pool.list_volume_ids()) == 160


def test_beyond_the_queue_calls_are_unavailable_never_resource_exhausted(
    fake_pool: Pool, socket_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("csi.server.QUEUED_RPCS_PER_WORKER", 1)  # 4 workers + 4 queued
    entered, release = threading.Semaphore(0), threading.Event()

    def slow_create(*args: Any, **kwargs: Any) -> Any:
        entered.release()
        release.wait(30)
        return fake_pool.create_volume(*args, **kwargs)

    client, stop = serve(PoolWrapper(fake_pool, create_volume=slow_create), socket_dir)
    try:
        answered = threading.Semaphore(0)
        calls = [client.controller.CreateVolume.future(request(f"busy-{i}"), timeout=60) for i in range(20)]
        for call in calls:
            call.add_done_callback(lambda _call: answered.release())
        for _ in range(4):
            assert entered.acquire(timeout=30)  # the workers are all taken
        for _ in range(12):
            assert answered.acquire(timeout=30)  # the queue is full: the rest are answered at once
        release.set()
        codes = Counter(outcome(call) for call in calls)
    finally:
        release.set()
        stop()
    assert codes == {grpc.StatusCode.OK: 8, grpc.StatusCode.UNAVAILABLE: 12}


def outcome(call: Any) -> grpc.StatusCode:
    """The status code of a call started with .future() (OK when it succeeds)."""
    try:
        call.result()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK
