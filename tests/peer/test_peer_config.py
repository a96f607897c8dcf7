"""The peer flags (--peer-address, --peer-tls-dir, --peers) and the directories of peers they choose: a
static list, or the DaemonSet's pods read through the Kubernetes API (a fake API object here)."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from csi.config import ConfigError, Peers, parse_args, parse_peers
from csi.peer import directory
from csi.peer.directory import KubernetesPeers, PeerSetupError, kubernetes_peers
from tests.csi.test_cli import assert_refused, run, serve_args

BASE = ["serve", "--endpoint", "unix:///run/csi.sock", "--node-id", "node-a", "--pool", "/pool"]
PEER_FLAGS = ["--peer-address", ":7443", "--peer-tls-dir", "tls", "--peers", "kubernetes"]


def test_without_peer_flags_there_is_no_peer_service() -> None:
    config = parse_args(BASE)
    assert (config.peer_address, config.peer_tls_dir, config.peers) == (None, None, None)


def test_peer_flags() -> None:
    config = parse_args(BASE + PEER_FLAGS)
    assert config.peer_address == ("0.0.0.0", 7443)
    assert config.peer_tls_dir == Path("tls").absolute()
    assert config.peers == Peers(kubernetes=True)


def test_static_peers() -> None:
    assert parse_peers("static:node-a=10.0.0.1:7443,node-b=[fd00::2]:7443") == Peers(
        static=(("node-a", "10.0.0.1:7443"), ("node-b", "[fd00::2]:7443"))
    )


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("kube", "--peers 'kube'"),
        ("static:", "NODE=HOST:PORT"),
        ("static:node-a", "NODE=HOST:PORT"),
        ("static:-bad-=1.2.3.4:1", "--peers '-bad-'"),
        ("static:a=1.2.3.4:1,a=1.2.3.5:1", "listed twice"),
        ("static:a=1.2.3.4:0", "port must be 1-65535"),
        ("static:a=fd00::1:7443", "brackets"),
    ],
)
def test_bad_peers_are_refused(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=None) as refused:
        parse_peers(text)
    assert words in str(refused.value)


@pytest.mark.parametrize("missing", ["--peer-address", "--peer-tls-dir", "--peers"])
def test_peer_flags_come_together(missing: str) -> None:
    i = PEER_FLAGS.index(missing)
    with pytest.raises(ConfigError) as refused:
        parse_args(BASE + PEER_FLAGS[:i] + PEER_FLAGS[i + 2 :])
    assert "needs all of --peer-address, --peer-tls-dir and --peers" in str(refused.value)


@pytest.mark.kernel
def test_a_missing_tls_directory_refuses_to_start(btrfs_mount: Path, tmp_path: Path) -> None:
    socket = Path("/tmp") / f"peer-cli-{tmp_path.name[-20:]}.sock"
    tls_dir = tmp_path / "nowhere"
    flags = ["--peer-address", "127.0.0.1:1", "--peer-tls-dir", str(tls_dir), "--peers", "static:n=h:1"]
    assert_refused(run(*serve_args(socket, btrfs_mount, *flags)), f"cannot read {tls_dir}/ca.crt")
    assert not socket.exists()


def pod(name: str, node: str | None, ip: str | None, owner: str | None, controller: bool = True) -> Any:
    refs = [SimpleNamespace(kind="DaemonSet", uid=owner, controller=controller)] if owner else None
    return SimpleNamespace(
        metadata=SimpleNamespace(name=name, owner_references=refs),
        spec=SimpleNamespace(node_name=node),
        status=SimpleNamespace(host_ip=ip),
    )


class FakeCoreV1:
    """The two CoreV1Api calls the directory makes, over a list of pods."""

    def __init__(self, pods: list[Any]) -> None:
        self.pods = pods
        self.fail = False
        self.lists = 0

    def read_namespaced_pod(self, name: str, namespace: str, **kwargs: Any) -> Any:
        assert namespace == "storage" and "_request_timeout" in kwargs
        return next(p for p in self.pods if p.metadata.name == name)

    def list_namespaced_pod(self, namespace: str, **kwargs: Any) -> Any:
        assert namespace == "storage" and "_request_timeout" in kwargs
        self.lists += 1
        if self.fail:
            raise OSError("connection refused")
        return SimpleNamespace(items=list(self.pods))


def test_kubernetes_peers_are_the_daemonset_pods_on_their_host_addresses() -> None:
    api = FakeCoreV1(
        [
            pod("csi-aaaaa", "node-a", "10.0.0.1", "ds-uid"),
            pod("csi-bbbbb", "node-b", "fd00::2", "ds-uid"),
            pod("csi-pending", None, None, "ds-uid"),  # not scheduled yet
            pod("csi-other", "node-c", "10.0.0.3", "other-ds"),  # another DaemonSet in the namespace
            pod("csi-adopted", "node-d", "10.0.0.4", "ds-uid", controller=False),
            pod("web", "node-e", "10.0.0.5", None),
        ]
    )
    peers = KubernetesPeers(api, "storage", "csi-aaaaa", 7443)
    assert peers.addresses() == {"node-a": "10.0.0.1:7443", "node-b": "[fd00::2]:7443"}
    assert peers.knows("node-b") and not peers.knows("node-c")


def test_kubernetes_peers_keep_the_last_list_when_the_api_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeCoreV1([pod("csi-a", "node-a", "10.0.0.1", "ds"), pod("csi-b", "node-b", "10.0.0.2", "ds")])
    peers = KubernetesPeers(api, "storage", "csi-a", 7443)
    assert set(peers.addresses()) == {"node-a", "node-b"}
    api.fail = True
    monkeypatch.setattr(directory, "REFRESH_SECONDS", 0.0)
    assert set(peers.addresses()) == {"node-a", "node-b"}
    assert api.lists == 2


def test_an_unknown_node_refreshes_the_list(monkeypatch: pytest.MonkeyPatch) -> None:
    api = FakeCoreV1([pod("csi-a", "node-a", "10.0.0.1", "ds")])
    peers = KubernetesPeers(api, "storage", "csi-a", 7443)
    assert not peers.knows("node-b")
    api.pods.append(pod("csi-b", "node-b", "10.0.0.2", "ds"))  # a node that joined
    monkeypatch.setattr(directory, "MISS_REFRESH_SECONDS", 0.0)
    assert peers.knows("node-b")


def test_kubernetes_peers_need_the_pod_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    with pytest.raises(PeerSetupError, match=r"\$POD_NAME"):
        kubernetes_peers(7443)
