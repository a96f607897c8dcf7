"""The driver's configuration: built once from the command line, validated, then frozen.

    btrfs-csi serve --endpoint unix:///PATH/csi.sock --node-id NODE --pool /PATH/TO/MOUNTED/BTRFS
                    [--driver-name NAME] [--quota-mode auto|simple|full] [--metrics-address HOST:PORT]
                    [--log-format text|json] [--log-level LEVEL] [--overprovision RATIO]
                    [--cpu auto|off|N]
                    [--peer-address HOST:PORT --peer-tls-dir DIR
                     --peers static:NODE=HOST:PORT[,NODE=HOST:PORT...]|kubernetes]

Checks here are the ones that need no kernel: the pool itself is checked by Pool.open at start.
"""

import argparse
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from btrfs_core.models import QUOTA_MODE_AUTO, QUOTA_MODE_SETTINGS
from csi import affinity
from csi.peer.directory import host_port

DEFAULT_DRIVER_NAME = "btrfs.csi.dev"
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

# GetPluginInfo.name: domain-name notation, at most 63 characters (CSI spec). Lower case only, because the
# name also becomes the topology key prefix, which must be a lower-case DNS name of at most 63 characters.
_DRIVER_NAME = re.compile(r"^[a-z0-9]([-.a-z0-9]*[a-z0-9])?$")
# The node ID is the value of the topology segment: at most 63 characters, alphanumeric at both ends.
_TOPOLOGY_VALUE = re.compile(r"^[A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?$")
_MAX_SEGMENT = 63
MAX_SOCKET_PATH_BYTES = 107  # sockaddr_un.sun_path holds 108 bytes with the final NUL


class ConfigError(Exception):
    """A flag value the driver refuses; the message is one line naming the flag."""


PEERS_KUBERNETES = "kubernetes"
PEERS_STATIC = "static:"


@dataclass(frozen=True)
class Peers:
    """--peers: the other node plugins, listed (`static`: node ID and HOST:PORT pairs) or found through
    the Kubernetes API (`kubernetes`)."""

    static: tuple[tuple[str, str], ...] = ()
    kubernetes: bool = False


@dataclass(frozen=True)
class Config:
    socket_path: Path  # from --endpoint unix://PATH
    node_id: str
    pool: Path
    driver_name: str = DEFAULT_DRIVER_NAME
    quota_mode: str = QUOTA_MODE_AUTO
    # Above 1.0 the pool promises volumes more than it can hold: writes may then fail with ENOSPC.
    overprovision: float = 1.0
    metrics_address: tuple[str, int] | None = None  # served by the metrics exporter when set
    # The peer service (cross-node restore and clone): all three set, or none (then no peer traffic).
    peer_address: tuple[str, int] | None = None
    peer_tls_dir: Path | None = None
    peers: Peers | None = None
    # A transfer from a peer that no CreateVolume asked for this long is cancelled (the provisioner
    # retries with back-off of up to 5 minutes).
    transfer_idle_seconds: float = 600.0
    log_format: str = "text"
    log_level: str = "INFO"
    cpu: affinity.CpuChoice = affinity.AUTO  # the one CPU every thread of the driver runs on
    max_workers: int = 16  # gRPC worker threads; the CO serialises per volume, so a few suffice
    grace_seconds: float = 10.0  # in-flight RPCs get this long to finish after SIGTERM

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def topology_key(self) -> str:
        return f"topology.{self.driver_name}/node"

    @property
    def topology(self) -> dict[str, str]:
        """This node's topology segments: the only place its volumes are accessible from."""
        return {self.topology_key: self.node_id}


def parse_endpoint(endpoint: str) -> Path:
    if not endpoint.startswith("unix://"):
        raise ConfigError(f"--endpoint {endpoint!r}: only unix:///absolute/path.sock endpoints are supported")
    path = endpoint[len("unix://") :]
    if not path.startswith("/"):
        raise ConfigError(f"--endpoint {endpoint!r}: the socket path must be absolute (unix:///path)")
    if "\0" in path:
        raise ConfigError("--endpoint: the socket path contains a NUL byte")
    if len(os.fsencode(path)) > MAX_SOCKET_PATH_BYTES:
        raise ConfigError(f"--endpoint: the socket path is longer than {MAX_SOCKET_PATH_BYTES} bytes")
    return Path(path)


def parse_metrics_address(address: str, flag: str = "--metrics-address") -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (all interfaces) -> (host, port)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ConfigError(f"{flag} {address!r}: expected HOST:PORT, e.g. 0.0.0.0:9842")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ConfigError(f"{flag} {address!r}: port must be 1-65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{flag} {address!r}: put an IPv6 host in brackets, [{host}]:{port}")
    return host or "0.0.0.0", port


def parse_peers(text: str) -> Peers:
    """`kubernetes`, or `static:` then NODE=HOST:PORT pairs separated by commas."""
    if text == PEERS_KUBERNETES:
        return Peers(kubernetes=True)
    if not text.startswith(PEERS_STATIC):
        raise ConfigError(
            f"--peers {text!r}: expected {PEERS_KUBERNETES} or {PEERS_STATIC}NODE=HOST:PORT[,...]"
        )
    nodes: dict[str, str] = {}
    for item in text[len(PEERS_STATIC) :].split(","):
        node, sep, address = item.partition("=")
        if not sep:
            raise ConfigError(f"--peers {item!r}: expected NODE=HOST:PORT")
        validate_node_id(node, "--peers")
        if node in nodes:
            raise ConfigError(f"--peers: node {node!r} is listed twice")
        host, port = parse_metrics_address(address, "--peers")
        nodes[node] = host_port(host, port)
    return Peers(static=tuple(nodes.items()))


def parse_overprovision(text: str) -> float:
    try:
        ratio = float(text)
    except ValueError:
        ratio = math.nan
    if not (math.isfinite(ratio) and ratio >= 1.0):
        raise ConfigError(f"--overprovision {text!r}: expected a ratio of at least 1.0, e.g. 1.5")
    return ratio


def parse_cpu(text: str) -> affinity.CpuChoice:
    if text in (affinity.AUTO, affinity.OFF):
        return text
    if not text.isdigit():
        raise ConfigError(f"--cpu {text!r}: expected auto, off or a CPU number, e.g. 0")
    return int(text)


def validate_driver_name(name: str) -> str:
    if len(name) > _MAX_SEGMENT or not _DRIVER_NAME.match(name):
        raise ConfigError(
            f"--driver-name {name!r}: must be a lower-case domain name of at most {_MAX_SEGMENT} characters"
        )
    prefix = f"topology.{name}"
    if len(prefix) > _MAX_SEGMENT:
        raise ConfigError(f"--driver-name {name!r}: too long for the topology key prefix {prefix!r} (max 63)")
    return name


def validate_node_id(node_id: str, flag: str = "--node-id") -> str:
    if len(node_id) > _MAX_SEGMENT or not _TOPOLOGY_VALUE.match(node_id):
        raise ConfigError(
            f"{flag} {node_id!r}: node IDs must be 1-63 characters, alphanumeric at both ends, "
            "with only '-', '_', '.' or alphanumerics between (it is the topology segment value)"
        )
    return node_id


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, exit code 2 from main(); argparse's own exit would print the whole usage first.
        raise ConfigError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="btrfs-csi", description="CSI driver serving volumes from btrfs subvolumes")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser("serve", help="serve the Identity, Controller and Node services")
    serve.add_argument("--endpoint", required=True, help="unix:///path/csi.sock")
    serve.add_argument("--node-id", required=True, help="this node's name; the topology segment value")
    serve.add_argument("--pool", required=True, help="mount point of the btrfs holding the volumes")
    serve.add_argument("--driver-name", default=DEFAULT_DRIVER_NAME)
    serve.add_argument("--quota-mode", choices=QUOTA_MODE_SETTINGS, default=QUOTA_MODE_AUTO)
    serve.add_argument("--metrics-address", default=None, help="HOST:PORT for the Prometheus exporter")
    serve.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    serve.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO")
    serve.add_argument(
        "--overprovision",
        default="1.0",
        metavar="RATIO",
        help="promise volumes up to RATIO times the space the pool has (default 1.0: only what can be"
        " written; above it, writes can fail with ENOSPC once the pool fills)",
    )
    serve.add_argument(
        "--cpu",
        default=affinity.AUTO,
        metavar="auto|off|N",
        help="the one CPU every thread of the driver runs on (default auto: the one it starts on, when"
        " it may use several; off: any, as the scheduler decides)",
    )
    serve.add_argument(
        "--peer-address", default=None, help="HOST:PORT of this node's peer service (mutual TLS)"
    )
    serve.add_argument(
        "--peer-tls-dir", default=None, metavar="DIR", help="ca.crt, tls.crt and tls.key (PEM)"
    )
    serve.add_argument(
        "--peers",
        default=None,
        help="static:NODE=HOST:PORT[,NODE=HOST:PORT...] or kubernetes (the DaemonSet's pods)",
    )
    return parser


def _peer_flags(args: argparse.Namespace) -> tuple[tuple[str, int] | None, Path | None, Peers | None]:
    given = [flag for flag in ("peer_address", "peer_tls_dir", "peers") if getattr(args, flag) is not None]
    if not given:
        return None, None, None
    if len(given) < 3:
        flags = ", ".join("--" + flag.replace("_", "-") for flag in given)
        raise ConfigError(
            f"{flags}: the peer service needs all of --peer-address, --peer-tls-dir and --peers"
        )
    return (
        parse_metrics_address(args.peer_address, "--peer-address"),
        Path(args.peer_tls_dir).absolute(),
        parse_peers(args.peers),
    )


def parse_args(argv: list[str]) -> Config:
    """The Config for a command line (without the program name); ConfigError says what is wrong."""
    args = _parser().parse_args(argv)
    peer_address, peer_tls_dir, peers = _peer_flags(args)
    return Config(
        socket_path=parse_endpoint(args.endpoint),
        node_id=validate_node_id(args.node_id),
        pool=Path(args.pool).absolute(),
        driver_name=validate_driver_name(args.driver_name),
        quota_mode=args.quota_mode,
        metrics_address=parse_metrics_address(args.metrics_address) if args.metrics_address else None,
        log_format=args.log_format,
        log_level=args.log_level,
        overprovision=parse_overprovision(args.overprovision),
        cpu=parse_cpu(args.cpu),
        peer_address=peer_address,
        peer_tls_dir=peer_tls_dir,
        peers=peers,
    )
