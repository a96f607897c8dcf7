"""The /metrics HTTP endpoint: address parsing, serving a registry, stopping."""

import contextlib
import gzip
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from btrfs_exporter.exposition import GaugeRows, LabelSet
from btrfs_exporter.rpc import RpcMetrics
from btrfs_exporter.server import WORKERS, MetricsServer, start_metrics_server
from tests.support import eventually


@pytest.fixture
def served() -> Iterator[tuple[MetricsServer, str]]:
    registry = CollectorRegistry()
    RpcMetrics(registry).duration.labels("Probe", "OK").observe(0.001)
    server = start_metrics_server(("127.0.0.1", 0), registry)
    try:
        yield server, f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


def get(url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_serves_its_registry(served: tuple[MetricsServer, str]) -> None:
    _, base = served
    status, headers, body = get(f"{base}/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b'btrfs_csi_rpc_duration_seconds_count{code="OK",method="Probe"} 1.0' in body
    assert int(headers["Content-Length"]) == len(body)


def test_gzip_when_accepted_and_404_elsewhere(served: tuple[MetricsServer, str]) -> None:
    _, base = served
    status, headers, body = get(f"{base}/metrics", **{"Accept-Encoding": "gzip"})
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert b"btrfs_csi_rpc_in_flight 0.0" in gzip.decompress(body)
    assert get(f"{base}/favicon.ico")[0] == 404


def test_requests_are_logged_at_debug_not_written_to_stderr(
    served: tuple[MetricsServer, str], caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """stderr holds the driver's own (JSON) log lines: the HTTP server adds none of its own there."""
    _, base = served
    caplog.set_level(logging.DEBUG, logger="btrfs_exporter.server")
    assert get(f"{base}/metrics")[0] == 200
    assert get(f"{base}/nothing")[0] == 404

    def both_logged() -> list[str]:
        lines = [r.getMessage() for r in caplog.records if r.name == "btrfs_exporter.server"]
        return lines if len(lines) == 2 else []

    lines = sorted(eventually(both_logged, "both requests logged"))
    assert all(line.startswith("metrics client 127.0.0.1: ") for line in lines)
    assert '"GET /metrics HTTP/1.1" 200' in lines[0] and '"GET /nothing HTTP/1.1" 404' in lines[1]
    assert capfd.readouterr().err == ""


def test_stop_closes_the_port() -> None:
    server = start_metrics_server(("127.0.0.1", 0), CollectorRegistry())
    url = f"http://127.0.0.1:{server.port}/metrics"
    assert get(url)[0] == 200
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=2)


def test_row_families_refuse_unsorted_labels_and_direct_samples() -> None:
    with pytest.raises(ValueError):
        GaugeRows("x_bytes", "x", ("volume_id", "pvc_name"))
    family = GaugeRows("x_bytes", "x", ("a", "b"))
    family.labels.append(LabelSet(("a", "b"), ("1", 'tw"o')))
    family.values.append(3)
    assert [(s.labels, s.value) for s in family.samples] == [({"a": "1", "b": 'tw"o'}, 3.0)]
    assert family.labels[0].text == 'a="1",b="tw\\"o"'
    with pytest.raises(ValueError):
        LabelSet(("a",), ("1", "2"))
    with pytest.raises(TypeError):
        family.samples = list(family.samples)


def test_half_sent_requests_hold_no_threads_and_never_block_a_scrape(
    served: tuple[MetricsServer, str],
) -> None:
    """1,000 clients that send half a request and wait (loopback): the scrape behind them is still
    answered (within get()'s 10 s timeout), and the server's threads stay a handful."""
    server, base = served
    threads = threading.active_count()
    clients = []
    try:
        for _ in range(1000):
            client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            client.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the blank line never comes
            clients.append(client)
        status, _, body = get(f"{base}/metrics")
        assert status == 200 and b"btrfs_csi_rpc_duration_seconds" in body
        assert threading.active_count() <= threads + WORKERS
    finally:
        for client in clients:
            client.close()


def test_a_request_that_never_ends_is_closed(
    served: tuple[MetricsServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = served
    monkeypatch.setattr("btrfs_exporter.server.HEAD_TIMEOUT", 0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as client:
        client.sendall(b"GET /metrics HTTP/1.1\r\n")
        # Closed by the server, not left waiting for the rest: EOF, or a reset (its data was unread).
        with contextlib.suppress(ConnectionResetError):
            assert client.recv(1024) == b""
