"""The wiring that makes the driver work in a cluster, asserted on the rendered chart: sidecar flags,
downward-API env, the socket each sidecar dials, kubelet registration, mount propagation,
privileges, CSIDriver fields, classes, topology and metrics plumbing."""

from __future__ import annotations

import posixpath

import pytest
import yaml

from csi.config import parse_args
from tests.chart.helm_render import (
    CHART_DIR,
    NAMESPACE,
    OPTIONS,
    Obj,
    containers,
    env,
    find,
    flag,
    init_containers,
    mounts,
    render,
    render_values,
    volumes,
)

DRIVER = "btrfs-csi"
NODE_CONTAINERS = {DRIVER, "node-driver-registrar", "csi-provisioner", "csi-snapshotter", "liveness-probe"}
SIDECAR_IMAGES = {
    "node-driver-registrar": "registry.k8s.io/sig-storage/csi-node-driver-registrar:v2.17.0",
    "csi-provisioner": "registry.k8s.io/sig-storage/csi-provisioner:v6.4.0",
    "csi-snapshotter": "registry.k8s.io/sig-storage/csi-snapshotter:v8.6.0",
    "liveness-probe": "registry.k8s.io/sig-storage/livenessprobe:v2.20.0",
    "csi-resizer": "registry.k8s.io/sig-storage/csi-resizer:v2.3.0",
    "snapshot-controller": "registry.k8s.io/sig-storage/snapshot-controller:v8.6.0",
}


def daemonset(option: str = "default") -> Obj:
    return find(render(option), "DaemonSet")


def field_ref(container: Obj, name: str) -> str:
    entry = env(container)[name]
    return str(entry["valueFrom"]["fieldRef"]["fieldPath"])


def host_path(workload: Obj, volume: str) -> str:
    return str(volumes(workload)[volume]["hostPath"]["path"])


def socket_volume(workload: Obj, container: Obj, socket_path: str) -> str:
    """The volume whose mount in `container` holds `socket_path` (the directory it dials)."""
    directory = posixpath.dirname(socket_path)
    matches = [name for name, m in mounts(container).items() if m["mountPath"].rstrip("/") == directory]
    assert len(matches) == 1, f"{container['name']}: no single mount at {directory}: {mounts(container)}"
    return matches[0]


# --- CSIDriver -------------------------------------------------------------------------------


@pytest.mark.parametrize("option", ["default", "custom-driver-name"])
def test_csidriver(option: str) -> None:
    driver = find(render(option), "CSIDriver")
    expected_name = OPTIONS[option].get("driverName", "btrfs.csi.dev")
    assert driver["metadata"]["name"] == expected_name
    assert driver["spec"] == {
        "attachRequired": False,
        "podInfoOnMount": True,
        "storageCapacity": True,
        "fsGroupPolicy": "File",
        "volumeLifecycleModes": ["Persistent"],
    }


# --- node DaemonSet: containers, sockets, registration -----------------------------------------


def test_node_daemonset_containers() -> None:
    ds = daemonset()
    assert set(containers(ds)) == NODE_CONTAINERS
    assert ds["metadata"]["namespace"] == NAMESPACE
    for name, container in containers(ds).items():
        if name in SIDECAR_IMAGES:
            assert container["image"] == SIDECAR_IMAGES[name]
        assert container["resources"]["requests"], f"{name} has no resource requests"


@pytest.mark.parametrize("option", ["default", "custom-driver-name", "everything"])
def test_every_sidecar_dials_the_driver_socket(option: str) -> None:
    """Each --csi-address lies in a volume that is the same hostPath the driver serves on."""
    ds = daemonset(option)
    values = OPTIONS[option]
    driver_name = values.get("driverName", "btrfs.csi.dev")
    kubelet_dir = values.get("kubeletDir", "/var/lib/kubelet")
    driver = containers(ds)[DRIVER]

    endpoint = flag(driver, "endpoint")
    assert endpoint is not None and endpoint.startswith("unix://")
    driver_socket = endpoint.removeprefix("unix://")
    served_from = socket_volume(ds, driver, driver_socket)
    assert host_path(ds, served_from) == f"{kubelet_dir}/plugins/{driver_name}"

    sidecars = NODE_CONTAINERS - {DRIVER}
    for name in sidecars:
        container = containers(ds)[name]
        address = flag(container, "csi-address")
        assert address is not None, f"{name} has no --csi-address"
        assert posixpath.basename(address) == posixpath.basename(driver_socket)
        assert socket_volume(ds, container, address) == served_from, name
        rel = posixpath.relpath(address, mounts(container)[served_from]["mountPath"])
        assert rel == posixpath.relpath(driver_socket, mounts(driver)[served_from]["mountPath"])


@pytest.mark.parametrize("option", ["default", "custom-driver-name", "everything"])
def test_registrar_registers_the_kubelet_side_socket(option: str) -> None:
    ds = daemonset(option)
    values = OPTIONS[option]
    driver_name = values.get("driverName", "btrfs.csi.dev")
    kubelet_dir = values.get("kubeletDir", "/var/lib/kubelet")
    registrar = containers(ds)["node-driver-registrar"]
    socket_dir = host_path(ds, "socket-dir")
    assert flag(registrar, "kubelet-registration-path") == f"{socket_dir}/csi.sock"
    assert socket_dir == f"{kubelet_dir}/plugins/{driver_name}"
    reg = [name for name, m in mounts(registrar).items() if m["mountPath"].rstrip("/") == "/registration"]
    assert len(reg) == 1
    assert host_path(ds, reg[0]) == f"{kubelet_dir}/plugins_registry"
    health = flag(registrar, "http-endpoint")
    assert health == f":{registrar['ports'][0]['containerPort']}"
    assert registrar["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_driver_arguments_and_env() -> None:
    ds = daemonset()
    driver = containers(ds)[DRIVER]
    assert driver["command"] == ["btrfs-csi"]
    assert driver["args"][0] == "serve"
    assert flag(driver, "node-id") == "$(NODE_NAME)"
    assert field_ref(driver, "NODE_NAME") == "spec.nodeName"
    assert flag(driver, "driver-name") == "btrfs.csi.dev"
    assert flag(driver, "quota-mode") == "auto"
    assert float(flag(driver, "overprovision") or "") == 1.0
    assert flag(driver, "cpu") == "auto"
    assert flag(driver, "log-format") == "json"
    pool = flag(driver, "pool")
    assert pool == "/var/lib/btrfs-csi"
    assert mounts(driver)["pool-dir"]["mountPath"] == pool
    assert host_path(ds, "pool-dir") == pool
    metrics_port = {p["name"]: p["containerPort"] for p in driver["ports"]}["metrics"]
    assert flag(driver, "metrics-address") == f"0.0.0.0:{metrics_port}"
    assert metrics_port == 9842


def test_driver_options_reach_the_driver() -> None:
    driver = containers(daemonset("everything"))[DRIVER]
    assert flag(driver, "driver-name") == "fast.btrfs.example.com"
    assert flag(driver, "quota-mode") == "simple"
    assert flag(driver, "overprovision") == "2.5"
    assert flag(driver, "cpu") == "3"
    assert flag(driver, "log-format") == "text"
    assert flag(driver, "log-level") == "debug"
    assert flag(driver, "pool") == "/srv/btrfs-pool"
    no_metrics = containers(daemonset("minimal"))[DRIVER]
    assert flag(no_metrics, "metrics-address") is None


def test_liveness_probe_chain() -> None:
    """Driver livenessProbe -> livenessprobe sidecar /healthz -> Probe RPC on the socket."""
    ds = daemonset()
    driver = containers(ds)[DRIVER]
    probe_port = driver["livenessProbe"]["httpGet"]["port"]
    port_numbers = {p["name"]: p["containerPort"] for p in driver["ports"]}
    assert driver["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert flag(containers(ds)["liveness-probe"], "health-port") == str(port_numbers[probe_port])
    assert port_numbers[probe_port] == 9808


# --- sidecar flags and env ----------------------------------------------------------------------


def test_provisioner_runs_in_node_deployment_mode() -> None:
    provisioner = containers(daemonset())["csi-provisioner"]
    assert flag(provisioner, "node-deployment") == ""
    assert flag(provisioner, "enable-capacity") == ""
    # DaemonSet owns the CSIStorageCapacity objects: pod -> DaemonSet is one level.
    assert flag(provisioner, "capacity-ownerref-level") == "1"
    assert flag(provisioner, "strict-topology") == ""
    assert flag(provisioner, "immediate-topology") == "false"
    assert flag(provisioner, "extra-create-metadata") == ""
    # Topology is GA and on by default since external-provisioner v5; the gate is slated for
    # removal, and an unknown gate makes the sidecar exit.
    assert flag(provisioner, "feature-gates") is None
    assert flag(provisioner, "leader-election") is None
    assert field_ref(provisioner, "NODE_NAME") == "spec.nodeName"
    assert field_ref(provisioner, "NAMESPACE") == "metadata.namespace"
    assert field_ref(provisioner, "POD_NAME") == "metadata.name"


def test_snapshotter_runs_in_node_deployment_mode() -> None:
    snapshotter = containers(daemonset())["csi-snapshotter"]
    assert flag(snapshotter, "node-deployment") == ""
    assert flag(snapshotter, "leader-election") is None
    assert field_ref(snapshotter, "NODE_NAME") == "spec.nodeName"


def test_extra_args_are_appended() -> None:
    objs = render_values({"node": {"provisioner": {"extraArgs": ["--kube-api-qps=20"]}}})
    provisioner = containers(find(objs, "DaemonSet"))["csi-provisioner"]
    assert provisioner["args"][-1] == "--kube-api-qps=20"
    resizer = containers(find(render("everything"), "Deployment", "btrfs-csi-resizer"))["csi-resizer"]
    assert resizer["args"][-1] == "--workers=20"


# --- privileges, propagation, credentials -------------------------------------------------------


@pytest.mark.parametrize("option", ["default", "loopfile-pool"])
def test_only_the_driver_is_privileged(option: str) -> None:
    ds = daemonset(option)
    for name, container in containers(ds).items():
        ctx = container.get("securityContext", {})
        if name == DRIVER:
            assert ctx == {"privileged": True}
            continue
        assert not ctx.get("privileged", False), name
        assert ctx["allowPrivilegeEscalation"] is False, name
        assert ctx["capabilities"]["drop"] == ["ALL"], name
        assert ctx["readOnlyRootFilesystem"] is True, name
        assert ctx["runAsUser"] == 0, name  # the driver's socket is root's, mode 0600
    for workload in render(option):
        if workload["kind"] == "Deployment":
            for container in containers(workload).values():
                assert not container.get("securityContext", {}).get("privileged", False)


@pytest.mark.parametrize("option", ["default", "everything"])
def test_mount_propagation(option: str) -> None:
    ds = daemonset(option)
    kubelet_dir = OPTIONS[option].get("kubeletDir", "/var/lib/kubelet")
    pool = OPTIONS[option].get("pool", {}).get("path", "/var/lib/btrfs-csi")
    driver_mounts = mounts(containers(ds)[DRIVER])
    pods = driver_mounts["pods-dir"]
    assert host_path(ds, "pods-dir") == f"{kubelet_dir}/pods"
    assert pods["mountPath"] == f"{kubelet_dir}/pods", "targets must have the same path as on the host"
    assert pods["mountPropagation"] == "Bidirectional"
    assert driver_mounts["pool-dir"]["mountPropagation"] == "HostToContainer"
    assert host_path(ds, "pool-dir") == pool
    for name, container in containers(ds).items():
        if name != DRIVER:
            assert all("mountPropagation" not in m for m in mounts(container).values()), name
            assert "pods-dir" not in mounts(container), name


def test_api_token_only_where_needed() -> None:
    ds = daemonset()
    pod = ds["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    service_account = find(render("default"), "ServiceAccount", pod["serviceAccountName"])
    assert service_account["automountServiceAccountToken"] is False
    token_users = {n for n, c in containers(ds).items() if "api-token" in mounts(c)}
    assert token_users == {"csi-provisioner", "csi-snapshotter"}
    for name in token_users:
        mount = mounts(containers(ds)[name])["api-token"]
        assert mount["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
        assert mount["readOnly"] is True
    sources = volumes(ds)["api-token"]["projected"]["sources"]
    paths = {
        item["path"]
        for s in sources
        for item in (s.get("configMap") or s.get("downwardAPI") or {}).get("items", [])
    } | {s["serviceAccountToken"]["path"] for s in sources if "serviceAccountToken" in s}
    assert paths == {"token", "ca.crt", "namespace"}


def test_placement() -> None:
    pod = daemonset()["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"btrfs.csi.dev/pool": "true"}
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "system-node-critical"
    assert "hostNetwork" not in pod


def test_host_network_and_api_address_reach_every_pod_that_talks_to_the_api() -> None:
    objs = render("host-network")
    api_users = {"csi-provisioner", "csi-snapshotter", "csi-resizer", "snapshot-controller"}
    workloads = [o for o in objs if o["kind"] in ("DaemonSet", "Deployment")]
    assert {o["kind"] for o in workloads} == {"DaemonSet", "Deployment"}
    seen = set()
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        assert pod["hostNetwork"] is True
        assert pod["dnsPolicy"] == "ClusterFirstWithHostNet"
        for name, container in containers(workload).items():
            variables = env(container)
            if name in api_users:
                seen.add(name)
                assert variables["KUBERNETES_SERVICE_HOST"]["value"] == "127.0.0.1"
                assert variables["KUBERNETES_SERVICE_PORT"]["value"] == "6443"
            else:
                assert "KUBERNETES_SERVICE_HOST" not in variables, name
    assert seen == api_users
    for workload in (o for o in render("default") if o["kind"] in ("DaemonSet", "Deployment")):
        assert all("KUBERNETES_SERVICE_HOST" not in env(c) for c in containers(workload).values())


# --- pool modes ------------------------------------------------------------------------------------


def test_existing_pool_has_no_init() -> None:
    ds = daemonset()
    assert init_containers(ds) == {}
    assert volumes(ds)["pool-dir"]["hostPath"]["type"] == "Directory"
    assert "host-dev" not in volumes(ds)


def test_loopfile_pool_init() -> None:
    ds = daemonset("loopfile-pool")
    init = init_containers(ds)["pool-init"]
    assert init["securityContext"] == {"privileged": True}
    assert init["image"] == containers(ds)[DRIVER]["image"], "mkfs.btrfs ships in the driver image"
    init_env = {e["name"]: e.get("value") for e in init["env"]}
    assert init_env == {
        "POOL_PATH": "/var/lib/btrfs-csi",
        "IMAGE_PATH": "/var/lib/btrfs-csi-loop/pool.img",
        "IMAGE_SIZE": "20G",
    }
    init_mounts = mounts(init)
    assert init_mounts["pool-dir"]["mountPath"] == "/var/lib/btrfs-csi"
    assert init_mounts["pool-dir"]["mountPropagation"] == "Bidirectional"
    assert host_path(ds, "loop-dir") == "/var/lib/btrfs-csi-loop"
    assert init_mounts["loop-dir"]["mountPath"] == "/var/lib/btrfs-csi-loop", (
        "same path: losetup -j matches it"
    )
    assert host_path(ds, "host-dev") == "/dev" and init_mounts["host-dev"]["mountPath"] == "/dev"
    assert volumes(ds)["pool-dir"]["hostPath"]["type"] == "DirectoryOrCreate"
    script = init["args"][0]
    for tool in ("truncate", "losetup", "blkid", "mkfs.btrfs", "mount -t btrfs", "findmnt"):
        assert tool in script


# --- classes and topology -----------------------------------------------------------------------


@pytest.mark.parametrize("option", ["default", "custom-driver-name"])
def test_storage_class(option: str) -> None:
    driver_name = OPTIONS[option].get("driverName", "btrfs.csi.dev")
    sc = find(render(option), "StorageClass")
    assert sc["provisioner"] == driver_name
    assert sc["volumeBindingMode"] == "WaitForFirstConsumer"
    assert sc["allowVolumeExpansion"] is True
    assert sc["reclaimPolicy"] == "Delete"
    # The driver reads no StorageClass parameters. An empty map is left out: the API server stores
    # it as absent, and a server-side apply of {} over that (helm upgrade) is an update of an
    # immutable field, refused (found by the e2e cluster).
    assert "parameters" not in sc
    vsc = find(render(option), "VolumeSnapshotClass")
    assert vsc["driver"] == driver_name
    assert vsc["deletionPolicy"] == "Delete"


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"storageClass": {"allowedNodes": ["n1"]}}, "topology.btrfs.csi.dev/node"),
        (
            {"driverName": "x.example.org", "storageClass": {"allowedNodes": ["n1"]}},
            "topology.x.example.org/node",
        ),
        ({"topologyKey": "example.org/host", "storageClass": {"allowedNodes": ["n1"]}}, "example.org/host"),
    ],
)
def test_topology_key(values: dict[str, object], key: str) -> None:
    sc = find(render_values(values), "StorageClass")
    assert sc["allowedTopologies"] == [{"matchLabelExpressions": [{"key": key, "values": ["n1"]}]}]
    assert "allowedTopologies" not in find(render("default"), "StorageClass")


def test_default_classes_annotation() -> None:
    objs = render("everything")
    assert find(objs, "StorageClass")["metadata"]["annotations"] == {
        "storageclass.kubernetes.io/is-default-class": "true"
    }
    vsc = find(objs, "VolumeSnapshotClass")
    assert vsc["metadata"]["annotations"] == {"snapshot.storage.kubernetes.io/is-default-class": "true"}
    assert vsc["deletionPolicy"] == "Retain"


# --- resizer and snapshot-controller ------------------------------------------------------------


@pytest.mark.parametrize("option", ["default", "everything"])
def test_resizer_deployment(option: str) -> None:
    objs = render(option)
    ds = find(objs, "DaemonSet")
    deploy = find(objs, "Deployment", "btrfs-csi-resizer")
    resizer = containers(deploy)["csi-resizer"]
    assert resizer["image"] == SIDECAR_IMAGES["csi-resizer"]
    assert flag(resizer, "leader-election") == ""
    assert flag(resizer, "leader-election-namespace") == "$(NAMESPACE)"
    assert field_ref(resizer, "NAMESPACE") == "metadata.namespace"
    assert flag(resizer, "handle-volume-inuse-error") == "false"
    assert flag(resizer, "node-deployment") is None
    # It dials the node plugin's socket on whatever btrfs node it runs on.
    address = flag(resizer, "csi-address")
    assert address is not None
    volume = socket_volume(deploy, resizer, address)
    assert host_path(deploy, volume) == host_path(ds, "socket-dir")
    pod, node_pod = deploy["spec"]["template"]["spec"], ds["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == node_pod["nodeSelector"]
    assert pod["tolerations"] == node_pod["tolerations"]
    assert resizer["livenessProbe"]["httpGet"]["path"] == "/healthz/leader-election"
    assert flag(resizer, "http-endpoint") == f":{resizer['ports'][0]['containerPort']}"
    if option == "everything":
        assert deploy["spec"]["replicas"] == 2


@pytest.mark.parametrize(
    ("values", "gate"), [({}, "true"), ({"resizer": {"volumeAttributesClass": False}}, "false")]
)
def test_the_resizer_modifies_the_volumes_of_claims_that_change_class(
    values: dict[str, object], gate: str
) -> None:
    objs = render_values(values)
    resizer = containers(find(objs, "Deployment", "btrfs-csi-resizer"))["csi-resizer"]
    assert flag(resizer, "feature-gates") == f"VolumeAttributesClass={gate}"
    # the PV name in ControllerModifyVolume: how a node tells another node's volume (retried)
    assert flag(resizer, "extra-modify-metadata") == ""
    assert not [o for o in objs if o["kind"] == "VolumeAttributesClass"]  # none by default


def test_volume_attributes_classes_in_values_are_created_for_this_driver() -> None:
    objs = render("everything")
    zstd = find(objs, "VolumeAttributesClass", "btrfs-zstd")
    assert zstd["apiVersion"] == "storage.k8s.io/v1"
    assert zstd["driverName"] == OPTIONS["everything"]["driverName"]
    assert zstd["parameters"] == {"compression": "zstd"}
    assert "parameters" not in find(objs, "VolumeAttributesClass", "btrfs-plain")
    assert find(objs, "StorageClass")["parameters"] == {"compression": "zstd:3"}


def test_resizer_can_be_disabled() -> None:
    objs = render("minimal")
    assert not [o for o in objs if o["kind"] == "Deployment"]
    assert not [o for o in objs if "resizer" in o["metadata"]["name"]]
    assert not [o for o in objs if o["kind"] in ("StorageClass", "VolumeSnapshotClass", "Service")]


def test_snapshot_controller() -> None:
    assert not [o for o in render("default") if "snapshot-controller" in o["metadata"]["name"]]
    deploy = find(render("snapshot-controller"), "Deployment", "btrfs-csi-snapshot-controller")
    controller = containers(deploy)["snapshot-controller"]
    assert controller["image"] == SIDECAR_IMAGES["snapshot-controller"]
    assert flag(controller, "enable-distributed-snapshotting") == ""
    assert flag(controller, "leader-election") == "true"
    assert field_ref(controller, "NAMESPACE") == "metadata.namespace"
    assert not [o for o in render("snapshot-controller") if o["kind"] == "CustomResourceDefinition"]


# --- metrics, ServiceMonitor, dashboard ---------------------------------------------------------


def test_metrics_service_and_servicemonitor() -> None:
    objs = render("metrics-servicemonitor")
    ds = find(objs, "DaemonSet")
    service = find(objs, "Service")
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9842, "targetPort": "metrics", "protocol": "TCP"}
    ]
    monitor = find(objs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert not [o for o in render("default") if o["kind"] in ("Service", "ServiceMonitor")]


def test_dashboard_configmap() -> None:
    assert not [o for o in render("default") if o["kind"] == "ConfigMap"]
    configmap = find(render("dashboard"), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (CHART_DIR / "dashboards" / "btrfs-csi.json").read_text()
    assert configmap["data"]["btrfs-csi.json"] == shipped.rstrip("\n")


# --- images -------------------------------------------------------------------------------------


def test_images_are_pinned_and_listed_in_chart_metadata() -> None:
    chart = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    listed = {i["name"]: i["image"] for i in yaml.safe_load(chart["annotations"]["artifacthub.io/images"])}
    used = set()
    for obj in render("everything"):
        if obj["kind"] in ("DaemonSet", "Deployment"):
            spec = obj["spec"]["template"]["spec"]
            for container in spec["containers"] + spec.get("initContainers", []):
                image = container["image"]
                repo, _, tag = image.rpartition(":")
                assert repo and tag and tag != "latest", image
                used.add(image)
    sidecars = {i for i in used if i.startswith("registry.k8s.io/")}
    assert sidecars == set(SIDECAR_IMAGES.values()) == set(listed.values())
    assert f"ghcr.io/btrfs-csi/btrfs-csi:{chart['appVersion']}" in used


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_the_driver_accepts_the_arguments_the_chart_gives_it(option: str) -> None:
    """The rendered command line goes through the driver's own parser, as the container will."""
    driver = containers(daemonset(option))[DRIVER]
    args = [arg.replace("$(NODE_NAME)", "node-a") for arg in driver["args"]]
    config = parse_args(args)
    assert config.node_id == "node-a"
    assert config.driver_name == flag(driver, "driver-name")
    assert str(config.pool) == flag(driver, "pool")
