"""The peer channel's mutual TLS: the installation's CA, this node's certificate and key (PEM files in
--peer-tls-dir), and the node a connected peer is, read from the certificate grpc verified.

A node's certificate names its node ID as common name and as DNS subject alternative name: the server
reads the client's common name, the client checks the server's DNS name against the node it meant to
reach (grpc.ssl_target_name_override), since peers are dialled by IP address.
"""

from dataclasses import dataclass
from pathlib import Path

import grpc

CA_FILE = "ca.crt"
CERT_FILE = "tls.crt"
KEY_FILE = "tls.key"
MAX_PEM_BYTES = 1 << 20  # a CA bundle is a few KiB; anything near this is not PEM material


class TlsError(Exception):
    """The TLS directory cannot be used; the message names the file."""


@dataclass(frozen=True)
class TlsMaterial:
    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, directory: Path) -> "TlsMaterial":
        return cls(*(_read_pem(directory / name) for name in (CA_FILE, CERT_FILE, KEY_FILE)))

    def server_credentials(self) -> grpc.ServerCredentials:
        """Refuses, at the handshake, any client without a certificate signed by the CA."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )


def _read_pem(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise TlsError(f"--peer-tls-dir: cannot read {path}: {exc.strerror}") from None
    if len(data) > MAX_PEM_BYTES or b"-----BEGIN " not in data:
        raise TlsError(f"--peer-tls-dir: {path} is not a PEM file")
    return data


def peer_node(context: grpc.ServicerContext) -> str | None:
    """The common name of the verified client certificate: the node ID of the peer, if it has one."""
    names: list[bytes] = [*context.auth_context().get("x509_common_name", ())]
    if len(names) != 1:
        return None
    try:
        return names[0].decode("ascii")
    except UnicodeDecodeError:
        return None
