"""Certificates and kubeconfigs of the local e2e cluster, made with the openssl CLI.

One CA signs everything: the API server's serving certificate (SANs 127.0.0.1, localhost and the
`kubernetes` Service names), the kubelet's serving certificate, and the client certificates of
the admin (system:masters), the controller-manager, the scheduler, the kubelet (system:nodes)
and the API server's own kubelet client. A separate RSA pair signs service-account tokens.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

API_SANS = "IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"

# file stem -> (subject, subjectAltName or "" for a client certificate)
CERTIFICATES = {
    "apiserver": ("/CN=kube-apiserver", API_SANS),
    "admin": ("/O=system:masters/CN=admin", ""),
    "apiserver-kubelet-client": ("/O=system:masters/CN=kube-apiserver-kubelet-client", ""),
    "controller-manager": ("/CN=system:kube-controller-manager", ""),
    "scheduler": ("/CN=system:kube-scheduler", ""),
}


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=120)


def node_certificates(node: str) -> dict[str, tuple[str, str]]:
    return {
        "kubelet": (f"/O=system:nodes/CN=system:node:{node}", ""),
        "kubelet-serving": (f"/CN={node}", f"IP:{node}" if node[0].isdigit() else f"DNS:{node}"),
    }


def make_pki(pki: Path, node: str) -> None:
    """Everything under `pki`, made once (an existing CA is reused, so kubeconfigs stay valid)."""
    pki.mkdir(parents=True, exist_ok=True)
    if not (pki / "ca.crt").exists():
        openssl("genrsa", "-out", str(pki / "ca.key"), "2048")
        openssl(
            "req", "-x509", "-new", "-key", str(pki / "ca.key"), "-subj", "/CN=btrfs-csi-e2e-ca",
            "-days", "30", "-out", str(pki / "ca.crt"),
        )  # fmt: skip
    if not (pki / "sa.key").exists():
        openssl("genrsa", "-out", str(pki / "sa.key"), "2048")
        openssl("rsa", "-in", str(pki / "sa.key"), "-pubout", "-out", str(pki / "sa.pub"))
    for stem, (subject, sans) in {**CERTIFICATES, **node_certificates(node)}.items():
        if (pki / f"{stem}.crt").exists():
            continue
        key, csr, ext = pki / f"{stem}.key", pki / f"{stem}.csr", pki / f"{stem}.ext"
        usage = "serverAuth" if sans else "clientAuth"
        ext.write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            f"extendedKeyUsage={usage}\n" + (f"subjectAltName={sans}\n" if sans else "")
        )
        openssl("genrsa", "-out", str(key), "2048")
        openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
        openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "ca.key"),
            "-CAcreateserial", "-days", "30", "-extfile", str(ext), "-out", str(pki / f"{stem}.crt"),
        )  # fmt: skip
        csr.unlink()
        ext.unlink()


def write_kubeconfig(path: Path, pki: Path, user: str, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "e2e", "cluster": {"server": server, "certificate-authority": str(pki / "ca.crt")}}
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki / f"{user}.crt"),
                    "client-key": str(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
        "current-context": "e2e",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
