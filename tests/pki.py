"""Test certificates for the peer channel, made with the openssl CLI at test time (no key is ever
committed): a CA per installation, and per node a certificate naming the node as CN and DNS SAN, in the
layout --peer-tls-dir reads (ca.crt, tls.crt, tls.key)."""

import subprocess
from pathlib import Path

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class TestCA:
    """A certificate authority in `directory`, issuing node certificates into directories of their own."""

    __test__ = False  # not a test class, despite the name

    def __init__(self, directory: Path, name: str = "btrfs-csi-test-ca") -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        _openssl(
            "req",
            "-x509",
            *_EC,
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            cwd=directory,
        )

    @property
    def cert(self) -> Path:
        return self.dir / "ca.crt"

    def issue(self, common_name: str, out: Path, dns_name: str | None = None) -> Path:
        """A --peer-tls-dir at `out` for `common_name` (DNS SAN `dns_name`, default the same), signed here."""
        out.mkdir(parents=True, exist_ok=True)
        (out / "ext.cnf").write_text(
            f"subjectAltName=DNS:{dns_name or common_name}\n"
            "basicConstraints=CA:FALSE\n"
            "keyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        _openssl("req", *_EC, "-keyout", "tls.key", "-out", "tls.csr", "-subj", f"/CN={common_name}", cwd=out)
        _openssl(
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            str(self.cert),
            "-CAkey",
            str(self.dir / "ca.key"),
            "-CAcreateserial",
            "-out",
            "tls.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            cwd=out,
        )
        (out / "ca.crt").write_bytes(self.cert.read_bytes())
        for leftover in ("tls.csr", "ext.cnf"):
            (out / leftover).unlink()
        return out
