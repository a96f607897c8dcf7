"""Security of the served driver: the socket (and any directory made for it) is closed to other users
whatever the umask; request secrets never reach the logs (DEBUG, JSON and text), the error messages or
the metrics endpoint.

Every RPC whose request has a field marked csi_secret is sent, found from the proto descriptors, so an RPC
added later is covered without a change here.
"""

import contextlib
import os
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor

from csi.pb import csi_pb2
from tests.conftest import free_port
from tests.csi.conftest import Client, MiB, mount_capability
from tests.stress.harness import RPC_TIMEOUT, ServedDriver, count

pytestmark = pytest.mark.kernel

SECRET = "s3cr3t-7f1c9a-never-log-me"
SERVICES = ("Identity", "Controller", "Node")


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def test_socket_and_its_directory_are_closed_to_others_whatever_the_umask(btrfs_mount: Path) -> None:
    with ServedDriver(btrfs_mount) as driver:
        made = driver.workdir / "made"
        driver.socket_path = made / "by" / "driver" / "csi.sock"
        with umask(0):
            driver.start()
        driver.wait_ready()
        mode = driver.socket.lstat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) & 0o077 == 0, oct(mode)
        for directory in (made, made / "by", made / "by" / "driver"):
            mode = directory.stat().st_mode
            assert stat.S_IMODE(mode) & 0o022 == 0, (
                f"{directory} is {oct(mode)}: others may replace the socket"
            )
        assert driver.stop() == 0


def secret_requests(sandbox: Path, failing: bool) -> Iterator[tuple[str, MethodDescriptor, Any]]:
    """Every request with a csi_secret field, the secret in it (and in mount flags, which may hold
    credentials), plausible otherwise: `failing` ones name what does not exist or is refused."""
    for service in SERVICES:
        for method in csi_pb2.DESCRIPTOR.services_by_name[service].methods:
            fields = method.input_type.fields
            if not any(field.GetOptions().Extensions[csi_pb2.csi_secret] for field in fields):
                continue
            request = getattr(csi_pb2, method.input_type.name)()
            for field in fields:
                fill(request, field, method.name, sandbox, failing)
            yield service, method, request


def fill(request: Any, field: FieldDescriptor, method: str, sandbox: Path, failing: bool) -> None:
    name = field.name
    capability = mount_capability(mount_flags=[f"password={SECRET}"] if failing else ["nosuid"])
    if field.GetOptions().Extensions[csi_pb2.csi_secret]:
        getattr(request, name).update({"password": SECRET, "token": f"Bearer {SECRET}"})
    elif name in ("volume_id", "source_volume_id"):
        setattr(request, name, "missing" if failing else "doomed" if method == "DeleteVolume" else "victim")
    elif name == "snapshot_id":
        setattr(
            request, name, "missing" if failing else "doomed" if method == "DeleteSnapshot" else "victim-snap"
        )
    elif name == "name":
        setattr(request, name, f"secret-{method.lower()}")
    elif name in ("target_path", "staging_target_path", "volume_path"):
        setattr(request, name, str(sandbox / method))
    elif name == "volume_capability":
        request.volume_capability.CopyFrom(capability)
    elif name == "volume_capabilities":
        request.volume_capabilities.append(capability)
    elif name == "capacity_range":
        request.capacity_range.required_bytes = 2 * MiB


def scrape(port: int) -> str:
    """The driver's /metrics; the test fails, not skips, when --metrics-address serves nothing."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
            text: str = reply.read().decode()
            return text
    except (urllib.error.URLError, ConnectionError) as exc:
        pytest.fail(f"--metrics-address 127.0.0.1:{port} served no /metrics: {exc}")


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_secrets_never_reach_logs_errors_or_metrics(btrfs_mount: Path, log_format: str) -> None:
    port = free_port()
    extra = ("--metrics-address", f"127.0.0.1:{port}")
    with ServedDriver(btrfs_mount, extra, log_format=log_format, log_level="DEBUG") as driver:
        driver.start()
        driver.wait_ready()
        client: Client = driver.client()
        client.create_volume("victim", 8 * MiB)
        client.create_snapshot("victim-snap", "victim")
        client.create_volume("doomed", MiB)
        client.create_snapshot("doomed", "victim")
        sandbox = driver.workdir / "targets"
        sandbox.mkdir()
        answers = []
        for failing in (False, True):
            for service, method, request in secret_requests(sandbox, failing):
                stub = getattr(client, service.lower())
                try:
                    getattr(stub, method.name)(request, timeout=RPC_TIMEOUT)
                    answers.append((method.name, "OK", ""))
                except grpc.RpcError as exc:
                    answers.append((method.name, exc.code().name, exc.details() or ""))
                count("requests carrying secrets")
        published = sandbox / "NodePublishVolume"
        if os.path.ismount(published):
            client.unpublish("victim", published)
        assert ("CreateVolume", "OK", "") in answers and ("NodePublishVolume", "OK", "") in answers, answers
        metrics = scrape(port)
        assert driver.stop() == 0
        logs = driver.log_text()
    assert '"level": "DEBUG"' in logs or " DEBUG " in logs  # DEBUG was on: the quietest lines were there
    for rpc, code, details in answers:
        assert code not in ("INTERNAL", "UNKNOWN"), (rpc, code, details)
        assert SECRET not in details, (rpc, details)
    assert SECRET not in logs
    assert "csi_rpc" in metrics or "btrfs_csi" in metrics, metrics[:500]
    assert SECRET not in metrics
