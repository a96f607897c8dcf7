"""`btrfs-csi serve` as a real process: refusals are one line with exit code 2, SIGTERM stops it cleanly."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

import csi
from csi.pb import csi_pb2, csi_pb2_grpc
from tests.support import eventually

REPO = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "btrfs-csi"


def command() -> list[str]:
    """The installed console script (`make` installs the package), else the module it points at."""
    if CONSOLE_SCRIPT.exists():
        return [str(CONSOLE_SCRIPT)]
    return [sys.executable, "-m", "csi"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command(), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=environment()
    )


def environment() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def serve_args(socket: Path, pool: Path, *extra: str) -> list[str]:
    return ["serve", "--endpoint", f"unix://{socket}", "--node-id", "node-1", "--pool", str(pool), *extra]


def assert_refused(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr


def test_bad_flags_are_refused_in_one_line() -> None:
    assert_refused(run(), "command")
    assert_refused(run("serve", "--endpoint", "tcp://x:1", "--node-id", "n", "--pool", "/"), "unix://")


def test_module_entry_point_is_the_same_program() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "csi", "serve", "--node-id", "n"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=environment(),
    )
    assert_refused(result, "required")


def test_grpc_is_imported_with_the_driver_s_experiments_unless_the_operator_chose() -> None:
    """gRPC reads GRPC_EXPERIMENTS once, on import: the value it sees when the driver's entry point
    imports it."""
    watch = (
        "import os, sys\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'grpc':\n"
        "            print(os.environ.get('GRPC_EXPERIMENTS'))\n"
        "            sys.meta_path.remove(self)\n"
        "sys.meta_path.insert(0, Watch())\n"
        "import csi.__main__\n"
    )

    def seen(env: dict[str, str]) -> str:
        ran = subprocess.run(
            [sys.executable, "-c", watch], capture_output=True, text=True, timeout=60, cwd=REPO, env=env
        )
        assert ran.returncode == 0, ran.stderr
        return ran.stdout.strip()

    env = environment()
    env.pop("GRPC_EXPERIMENTS", None)
    assert seen(env) == csi.GRPC_EXPERIMENTS == "-event_engine_listener"
    assert seen(env | {"GRPC_EXPERIMENTS": "-event_engine_client"}) == "-event_engine_client"


def test_non_btrfs_pool_is_refused_with_the_reason(tmp_path: Path, socket_dir: Path) -> None:
    result = run(*serve_args(socket_dir / "csi.sock", tmp_path))
    assert_refused(result, "not btrfs")
    assert not (socket_dir / "csi.sock").exists()
    assert_refused(run(*serve_args(socket_dir / "csi.sock", tmp_path / "missing")), "not a directory")


@contextlib.contextmanager
def served(socket: Path, pool: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """`btrfs-csi serve` in a child process, up once its socket exists; killed if still running after."""
    process = subprocess.Popen(
        [*command(), *serve_args(socket, pool, *extra)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=environment(),
    )
    try:
        eventually(lambda: socket.exists() or process.poll() is not None, "the driver's socket made")
        if process.poll() is not None:
            raise AssertionError(f"the driver did not start: {process.communicate(timeout=10)}")
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


@pytest.fixture
def running(btrfs_mount: Path, socket_dir: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    socket = socket_dir / "csi.sock"
    with served(socket, btrfs_mount, "--log-format", "json") as process:
        yield process, socket


@pytest.mark.kernel
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serves_until_signalled_then_stops_gracefully(
    running: tuple[subprocess.Popen[str], Path], signum: signal.Signals
) -> None:
    process, socket = running
    assert (socket.stat().st_mode & 0o777) == 0o600
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        identity = csi_pb2_grpc.IdentityStub(channel)
        assert identity.Probe(csi_pb2.ProbeRequest(), timeout=10).ready.value
        assert identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10).name == "btrfs.csi.dev"
    started = time.monotonic()
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert time.monotonic() - started < 15  # within the grace period, not killed
    assert not socket.exists()
    assert "Traceback" not in stderr
    messages = [json.loads(line)["msg"] for line in stderr.splitlines()]  # gRPC's own lines are not JSON
    assert "serving" in messages and "stopped" in messages, stderr


@pytest.mark.kernel
def test_second_instance_on_the_same_socket_is_refused(
    running: tuple[subprocess.Popen[str], Path], btrfs_mount: Path
) -> None:
    _, socket = running
    assert_refused(run(*serve_args(socket, btrfs_mount)), "in use")
    assert socket.exists()  # the running driver's socket was left alone


def test_a_cpu_it_may_not_use_is_refused(tmp_path: Path, socket_dir: Path) -> None:
    assert_refused(run(*serve_args(socket_dir / "csi.sock", tmp_path, "--cpu", "4096")), "--cpu 4096")


def thread_cpus(pid: int) -> set[str]:
    """The Cpus_allowed_list of every thread of a process."""
    return {
        line.split(":", 1)[1].strip()
        for status in Path(f"/proc/{pid}/task").glob("*/status")
        for line in status.read_text().splitlines()
        if line.startswith("Cpus_allowed_list:")
    }


@pytest.mark.kernel
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs a process allowed on 2 CPUs or more")
def test_every_thread_runs_on_the_one_cpu_it_logs(running: tuple[subprocess.Popen[str], Path]) -> None:
    process, socket = running
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        assert csi_pb2_grpc.IdentityStub(channel).Probe(csi_pb2.ProbeRequest(), timeout=10).ready.value
    cpus = thread_cpus(process.pid)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)
    assert len(cpus) == 1, cpus
    assert f'"cpu": {cpus.pop()}' in stderr
