"""Offline checks of the local provider's plumbing (these run everywhere, without a cluster)."""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import tomllib
from pathlib import Path

from tests.chart.helm_render import containers, kinds, render_values
from tests.e2e import images, local_cluster, local_control_plane, local_node
from tests.e2e.images import SIDECARS, Image, chart_images, docker_ignored, image_packages

DOCKERFILE = (images.REPO / "Dockerfile").read_text()


def test_dockerfile_and_e2e_image_install_the_same_debian_packages() -> None:
    assert "btrfs-progs" in image_packages()
    assert "COPY image-packages.txt /tmp/image-packages.txt" in DOCKERFILE
    assert re.search(r"sed 's/#\.\*//' /tmp/image-packages.txt \| xargs apt-get install", DOCKERFILE)
    assert "image-packages.txt" not in docker_ignored(), "the Dockerfile COPYs it from the build context"


def test_every_chart_image_has_a_builder() -> None:
    references = chart_images()
    assert set(references) == set(SIDECARS), (
        "a sidecar image of values.yaml without a builder, or the reverse"
    )
    for name, reference in references.items():
        assert reference.startswith(f"registry.k8s.io/sig-storage/{name}:v"), reference


def test_image_archive_is_in_docker_save_format(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    layer = images.layer_from_dir(root, tmp_path / "layer.tar")
    archive = Image("example.org/tool:1", [layer], ["/bin/tool"], ["--help"]).write(tmp_path / "image.tar")
    (entry,) = json.loads(tar_member(archive, "manifest.json"))
    assert entry["RepoTags"] == ["example.org/tool:1"]
    config_bytes = tar_member(archive, entry["Config"])
    assert entry["Config"] == hashlib.sha256(config_bytes).hexdigest() + ".json"
    config = json.loads(config_bytes)
    (layer_name,) = entry["Layers"]
    layer_digest = hashlib.sha256(tar_member(archive, layer_name)).hexdigest()
    assert config["rootfs"]["diff_ids"] == [f"sha256:{layer_digest}"]
    assert config["config"]["Entrypoint"] == ["/bin/tool"] and config["config"]["Cmd"] == ["--help"]


def tar_member(archive: Path, name: str) -> bytes:
    with tarfile.open(archive) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


def test_containerd_config_is_valid_toml_with_the_settings_this_machine_needs() -> None:
    config = {
        "version": 2,
        "grpc": {"address": "/x/containerd.sock"},
        "plugins": {"io.containerd.grpc.v1.cri": {"restrict_oom_score_adj": True, "cni": {"bin_dir": "/x"}}},
    }
    assert tomllib.loads(local_node.to_toml(config)) == config


def test_cluster_addresses_are_loopback_only() -> None:
    assert local_cluster.NODE == "127.0.0.1"
    assert local_control_plane.API_SERVER.startswith("https://127.0.0.1:")
    assert "127.0.0.1" in local_control_plane.ETCD_CLIENT and "127.0.0.1" in local_control_plane.ETCD_PEER
    assert "127.1." in local_node.CNI_PLUGIN and "e2e-peer" in local_node.CNI_PLUGIN


def test_chart_values_set_only_what_an_air_gapped_user_would() -> None:
    values = local_cluster.LocalCluster(Path("/nonexistent")).chart_values()
    assert set(values) == {"image", "node", "resizer", "hostNetwork", "apiServer", "snapshotController"}
    rendered = render_values(values)
    for workload in (o for o in rendered if o["kind"] in ("DaemonSet", "Deployment")):
        for container in containers(workload).values():
            assert container["imagePullPolicy"] == "Never", container["name"]
    # Only image and network settings differ from the defaults: same objects, same containers.
    assert kinds(rendered) == kinds(render_values({"snapshotController": {"enabled": True}}))
    assert values["apiServer"] == {"host": "127.0.0.1", "port": local_control_plane.API_PORT}
