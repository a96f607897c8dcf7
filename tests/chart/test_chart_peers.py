"""The chart's peer service (peers.enabled): host network, the driver's flags and its API access to
list the DaemonSet's pods, and TLS material that works: the certificates Helm generates carry the
peer channel between two node plugins."""

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from btrfs_core.fake import FakeBackend
from btrfs_core.models import Source, SourceKind
from btrfs_core.pool import Pool
from csi.__main__ import Driver, start
from csi.config import Config, Peers
from tests.chart.helm_render import OPTIONS, containers, env, find, mounts, render, render_values, volumes
from tests.conftest import free_ports

MiB = 1 << 20


def test_peers_are_off_by_default() -> None:
    objs = render("default")
    driver = containers(find(objs, "DaemonSet"))["btrfs-csi"]
    assert not [arg for arg in driver["args"] if arg.startswith("--peer")]
    assert not [o for o in objs if o["kind"] == "Secret" or o["metadata"]["name"].endswith("-peers")]


@pytest.mark.parametrize("option", ["peers", "peers-secret"])
def test_peer_service_wiring(option: str) -> None:
    objs = render(option)
    ds = find(objs, "DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True  # peers dial each other at the node's address
    driver = containers(ds)["btrfs-csi"]
    assert {
        "--peer-address=0.0.0.0:9843",
        "--peer-tls-dir=/peer-tls/$(NODE_NAME)",
        "--peers=kubernetes",
    } <= set(driver["args"])
    assert env(driver)["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert "api-token" in mounts(driver) and mounts(driver)["peer-tls"]["readOnly"] is True
    secret = volumes(ds)["peer-tls"]["secret"]
    nodes = OPTIONS[option]["peers"]["nodes"]
    assert {(item["key"], item["path"]) for item in secret["items"]} == {
        pair
        for node in nodes
        for pair in (
            (f"{node}.crt", f"{node}/tls.crt"),
            (f"{node}.key", f"{node}/tls.key"),
            ("ca.crt", f"{node}/ca.crt"),
        )
    }
    role = find(objs, "Role", "btrfs-csi-peers")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    binding = find(objs, "RoleBinding", "btrfs-csi-peers")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    generated = [o for o in objs if o["kind"] == "Secret"]
    if option == "peers-secret":
        assert secret["secretName"] == "my-peer-tls" and not generated
    else:
        assert [o["metadata"]["name"] for o in generated] == [secret["secretName"]]


def test_peers_need_their_nodes() -> None:
    with pytest.raises(Exception, match=r"peers.nodes"):
        render_values({"peers": {"enabled": True}})


@pytest.fixture
def generated_tls_dirs(tmp_path: Path) -> dict[str, Path]:
    """The Secret Helm generates, laid out as the DaemonSet mounts it (one directory per node)."""
    data = find(render("peers"), "Secret")["data"]
    dirs = {}
    for node in ("node-a", "node-b"):
        directory = tmp_path / node
        directory.mkdir()
        for key, name in (("ca.crt", "ca.crt"), (f"{node}.crt", "tls.crt"), (f"{node}.key", "tls.key")):
            (directory / name).write_bytes(base64.b64decode(data[key]))
        dirs[node] = directory
    return dirs


@pytest.fixture
def two_nodes(generated_tls_dirs: dict[str, Path], tmp_path: Path) -> Iterator[dict[str, Driver]]:
    ports = free_ports(generated_tls_dirs)
    peers = Peers(static=tuple((node, f"127.0.0.1:{port}") for node, port in ports.items()))
    drivers: dict[str, Driver] = {}
    try:
        for node, tls_dir in generated_tls_dirs.items():
            root = tmp_path / f"pool-{node}"
            root.mkdir()
            config = Config(
                socket_path=Path("/tmp") / f"chart-peers-{ports[node]}.sock",
                node_id=node,
                pool=root,
                max_workers=2,
                peer_address=("127.0.0.1", ports[node]),
                peer_tls_dir=tls_dir,
                peers=peers,
            )
            drivers[node] = start(config, Pool.open(root, backend=FakeBackend(root)))
        yield drivers
    finally:
        for driver in drivers.values():
            driver.stop(0)


def test_the_generated_certificates_carry_the_peer_channel(two_nodes: dict[str, Driver]) -> None:
    a, b = two_nodes["node-a"], two_nodes["node-b"]
    snapshot = a.pool.create_snapshot("snap", a.pool.create_volume("pvc", 32 * MiB).id)
    assert b.peers is not None
    assert b.peers.client.locate(Source(SourceKind.SNAPSHOT, snapshot.id)) == ("node-a", snapshot.size)
