"""The frozen Config from the command line: defaults, derived values, and one-line refusals."""

import dataclasses
from pathlib import Path

import pytest

from csi.config import Config, ConfigError, parse_args, parse_metrics_address

BASE = [
    "serve",
    "--endpoint",
    "unix:///run/csi/csi.sock",
    "--node-id",
    "node-1",
    "--pool",
    "/var/lib/btrfs-csi",
]


def test_defaults_and_derived_values() -> None:
    config = parse_args(BASE)
    assert config.socket_path == Path("/run/csi/csi.sock")
    assert config.endpoint == "unix:///run/csi/csi.sock"
    assert config.node_id == "node-1"
    assert config.pool == Path("/var/lib/btrfs-csi")
    assert config.driver_name == "btrfs.csi.dev"
    assert config.topology_key == "topology.btrfs.csi.dev/node"
    assert config.topology == {"topology.btrfs.csi.dev/node": "node-1"}
    assert (config.quota_mode, config.log_format, config.log_level) == ("auto", "text", "INFO")
    assert config.metrics_address is None
    assert config.overprovision == 1.0  # promise only what can be written
    assert config.cpu == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.node_id = "other"  # type: ignore[misc]


def test_every_flag() -> None:
    config = parse_args(
        [
            *BASE,
            "--driver-name",
            "btrfs.example.org",
            "--quota-mode",
            "simple",
            "--metrics-address",
            "[::]:9842",
            "--log-format",
            "json",
            "--log-level",
            "debug",
            "--overprovision",
            "1.5",
            "--cpu",
            "1",
        ]
    )
    assert config.driver_name == "btrfs.example.org"
    assert config.topology_key == "topology.btrfs.example.org/node"
    assert config.quota_mode == "simple"
    assert config.metrics_address == ("::", 9842)
    assert (config.log_format, config.log_level) == ("json", "DEBUG")
    assert config.overprovision == 1.5
    assert config.cpu == 1
    assert parse_args([*BASE, "--cpu", "off"]).cpu == "off"


def test_relative_pool_is_made_absolute() -> None:
    config = parse_args(["serve", "--endpoint", "unix:///x.sock", "--node-id", "n", "--pool", "rel"])
    assert config.pool.is_absolute()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], "command"),
        (["serve"], "required"),
        (["serve", "--endpoint", "unix:///x.sock", "--node-id", "n"], "--pool"),
        ([*BASE[:2], "tcp://0.0.0.0:1", *BASE[3:]], "unix://"),
        ([*BASE[:2], "unix://relative.sock", *BASE[3:]], "absolute"),
        ([*BASE[:2], "unix:///" + "x" * 120, *BASE[3:]], "107 bytes"),
        ([*BASE[:4], "bad node!", *BASE[5:]], "--node-id"),
        ([*BASE[:4], "x" * 64, *BASE[5:]], "--node-id"),
        ([*BASE, "--driver-name", "Upper.Case"], "--driver-name"),
        ([*BASE, "--driver-name", "a" * 60], "topology key"),
        ([*BASE, "--quota-mode", "fast"], "invalid choice"),
        ([*BASE, "--metrics-address", "9842"], "HOST:PORT"),
        ([*BASE, "--metrics-address", "host:99999"], "port"),
        ([*BASE, "--log-format", "xml"], "invalid choice"),
        ([*BASE, "--log-level", "chatty"], "invalid choice"),
        ([*BASE, "--unknown"], "unrecognized"),
        ([*BASE, "--overprovision", "0.9"], "--overprovision"),
        ([*BASE, "--overprovision", "nan"], "--overprovision"),
        ([*BASE, "--overprovision", "inf"], "--overprovision"),
        ([*BASE, "--overprovision", "lots"], "--overprovision"),
        ([*BASE, "--cpu", "-1"], "--cpu"),
        ([*BASE, "--cpu", "first"], "--cpu"),
    ],
)
def test_refusals_are_one_line_and_name_the_problem(args: list[str], words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_args(args)
    assert words in str(exc.value)
    assert "\n" not in str(exc.value)


def test_config_is_a_plain_frozen_dataclass() -> None:
    config = Config(socket_path=Path("/s.sock"), node_id="n", pool=Path("/p"))
    assert config.grace_seconds > 0 and config.max_workers > 0


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9842", ("127.0.0.1", 9842)),
        (":9842", ("0.0.0.0", 9842)),
        ("[::1]:9842", ("::1", 9842)),
        ("localhost:80", ("localhost", 80)),
    ],
)
def test_parse_metrics_address(address: str, expected: tuple[str, int]) -> None:
    assert parse_metrics_address(address) == expected


@pytest.mark.parametrize("address", ["9842", "host:", "host:port", "::1:9842", "h:70000", "h:0", ""])
def test_parse_metrics_address_refuses(address: str) -> None:
    with pytest.raises(ConfigError, match="--metrics-address"):
        parse_metrics_address(address)
