"""RBAC: each sidecar gets exactly the verbs its documentation lists for this deployment mode, through
its own (Cluster)Role bound to the ServiceAccount of the pod it runs in."""

from __future__ import annotations

from collections import defaultdict

import pytest

from tests.chart.helm_render import NAMESPACE, Obj, find, render

Grants = dict[tuple[str, str], set[str]]

READ = {"get", "list", "watch"}
EVENTS = {"list", "watch", "create", "update", "patch"}
LEASES = {"get", "watch", "list", "delete", "update", "create"}

# external-provisioner, --node-deployment --enable-capacity --capacity-ownerref-level=1
PROVISIONER_CLUSTER: Grants = {
    ("", "persistentvolumes"): READ | {"create", "update", "patch", "delete"},
    ("", "persistentvolumeclaims"): READ | {"update"},
    ("storage.k8s.io", "storageclasses"): READ,
    ("", "events"): EVENTS,
    ("snapshot.storage.k8s.io", "volumesnapshots"): READ | {"update"},
    ("snapshot.storage.k8s.io", "volumesnapshotcontents"): {"get", "list"},
    ("storage.k8s.io", "csinodes"): READ,
    ("", "nodes"): READ,
    ("storage.k8s.io", "volumeattributesclasses"): READ,
}
PROVISIONER_NAMESPACED: Grants = {
    ("storage.k8s.io", "csistoragecapacities"): READ | {"create", "update", "patch", "delete"},
    ("", "pods"): {"get"},  # owner chain pod -> DaemonSet
}
# external-snapshotter sidecar, --node-deployment (no leader election)
SNAPSHOTTER_CLUSTER: Grants = {
    ("", "events"): EVENTS,
    ("snapshot.storage.k8s.io", "volumesnapshotclasses"): READ,
    ("snapshot.storage.k8s.io", "volumesnapshotcontents"): READ | {"create", "update", "delete", "patch"},
    ("snapshot.storage.k8s.io", "volumesnapshotcontents/status"): {"update", "patch"},
}
# external-resizer with leader election, --handle-volume-inuse-error=false
RESIZER_CLUSTER: Grants = {
    ("", "persistentvolumes"): READ | {"patch"},
    ("", "persistentvolumeclaims"): READ,
    ("", "persistentvolumeclaims/status"): {"patch"},
    ("", "events"): EVENTS,
    ("storage.k8s.io", "volumeattributesclasses"): READ,
}
LEADER_ELECTION: Grants = {("coordination.k8s.io", "leases"): LEASES}
# snapshot-controller --enable-distributed-snapshotting
SNAPSHOT_CONTROLLER_CLUSTER: Grants = {
    ("", "persistentvolumes"): READ,
    ("", "persistentvolumeclaims"): READ | {"update"},
    ("", "events"): EVENTS,
    ("", "nodes"): READ,
    ("snapshot.storage.k8s.io", "volumesnapshotclasses"): READ,
    ("snapshot.storage.k8s.io", "volumesnapshotcontents"): READ | {"create", "update", "delete", "patch"},
    ("snapshot.storage.k8s.io", "volumesnapshotcontents/status"): {"patch"},
    ("snapshot.storage.k8s.io", "volumesnapshots"): READ | {"update", "patch", "delete"},
    ("snapshot.storage.k8s.io", "volumesnapshots/status"): {"update", "patch"},
}


def grants(role: Obj) -> Grants:
    out: Grants = defaultdict(set)
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"], rule
                out[(group, resource)] |= set(rule["verbs"])
    return dict(out)


def bound_roles(objs: list[Obj], service_account: str) -> dict[str, Obj]:
    """Role/ClusterRole name -> object, for every binding naming the ServiceAccount."""
    roles: dict[str, Obj] = {}
    for binding in objs:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = binding["subjects"]
        if not any(s["kind"] == "ServiceAccount" and s["name"] == service_account for s in subjects):
            continue
        assert all(s.get("namespace") == NAMESPACE for s in subjects)
        ref = binding["roleRef"]
        role = find(objs, ref["kind"], ref["name"])
        if binding["kind"] == "RoleBinding":
            assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NAMESPACE
        roles[f"{ref['kind']}/{ref['name']}"] = role
    return roles


def service_account_of(objs: list[Obj], kind: str, name: str) -> str:
    sa = find(objs, kind, name)["spec"]["template"]["spec"]["serviceAccountName"]
    find(objs, "ServiceAccount", sa)
    return str(sa)


def test_node_plugin_rbac_per_sidecar() -> None:
    objs = render("default")
    sa = service_account_of(objs, "DaemonSet", "btrfs-csi-node")
    roles = bound_roles(objs, sa)
    assert {name: grants(role) for name, role in roles.items()} == {
        "ClusterRole/btrfs-csi-provisioner": PROVISIONER_CLUSTER,
        "Role/btrfs-csi-provisioner": PROVISIONER_NAMESPACED,
        "ClusterRole/btrfs-csi-snapshotter": SNAPSHOTTER_CLUSTER,
    }


def test_node_plugin_has_no_secrets_leases_or_attachments() -> None:
    objs = render("default")
    sa = service_account_of(objs, "DaemonSet", "btrfs-csi-node")
    resources = {res for role in bound_roles(objs, sa).values() for (_, res) in grants(role)}
    assert not resources & {"secrets", "leases", "volumeattachments", "replicasets", "daemonsets"}


@pytest.mark.parametrize("option", ["default", "everything"])
def test_resizer_rbac(option: str) -> None:
    objs = render(option)
    sa = service_account_of(objs, "Deployment", "btrfs-csi-resizer")
    assert sa != service_account_of(objs, "DaemonSet", "btrfs-csi-node")
    roles = bound_roles(objs, sa)
    assert {name: grants(role) for name, role in roles.items()} == {
        "ClusterRole/btrfs-csi-resizer": RESIZER_CLUSTER,
        "Role/btrfs-csi-resizer": LEADER_ELECTION,
    }


def test_snapshot_controller_rbac() -> None:
    objs = render("snapshot-controller")
    sa = service_account_of(objs, "Deployment", "btrfs-csi-snapshot-controller")
    roles = bound_roles(objs, sa)
    assert {name: grants(role) for name, role in roles.items()} == {
        "ClusterRole/btrfs-csi-snapshot-controller": SNAPSHOT_CONTROLLER_CLUSTER,
        "Role/btrfs-csi-snapshot-controller": LEADER_ELECTION,
    }


def test_no_dangling_bindings() -> None:
    objs = render("everything")
    accounts = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
    for binding in (o for o in objs if o["kind"] in ("RoleBinding", "ClusterRoleBinding")):
        assert {s["name"] for s in binding["subjects"]} <= accounts
        find(objs, binding["roleRef"]["kind"], binding["roleRef"]["name"])
