"""Every rendered object validates against the Kubernetes OpenAPI schemas (kubernetes-validate, strict
mode: unknown fields are errors) for the two newest Kubernetes minor versions it ships.

kubernetes-validate has no schemas for custom resources. The chart renders two CRD kinds,
VolumeSnapshotClass and ServiceMonitor; their fields are checked here against the CRDs'
published schemas (external-snapshotter v8, prometheus-operator monitoring.coreos.com/v1), limited
to what the chart sets. Any other kind without a schema fails the test rather than being skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import kubernetes_validate
import pytest

from tests.chart.helm_render import OPTIONS, Obj, find, render
from tests.chart.kube_versions import NEWEST_KUBE_VERSIONS

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# monitoring.coreos.com/v1 Duration
PROM_DURATION = re.compile(
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
)
RELABEL_ACTIONS = {
    "replace",
    "Replace",
    "keep",
    "Keep",
    "drop",
    "Drop",
    "hashmod",
    "HashMod",
    "labelmap",
    "LabelMap",
    "labeldrop",
    "LabelDrop",
    "labelkeep",
    "LabelKeep",
    "lowercase",
    "Lowercase",
    "uppercase",
    "Uppercase",
    "keepequal",
    "KeepEqual",
    "dropequal",
    "DropEqual",
}
METADATA_KEYS = {"name", "namespace", "labels", "annotations"}
ENDPOINT_KEYS = {
    "port",
    "targetPort",
    "path",
    "scheme",
    "params",
    "interval",
    "scrapeTimeout",
    "tlsConfig",
    "bearerTokenFile",
    "bearerTokenSecret",
    "authorization",
    "honorLabels",
    "honorTimestamps",
    "trackTimestampsStaleness",
    "basicAuth",
    "oauth2",
    "metricRelabelings",
    "relabelings",
    "proxyUrl",
    "followRedirects",
    "enableHttp2",
    "filterRunning",
}


def _check_metadata(obj: Obj, namespaced: bool) -> list[str]:
    meta = obj["metadata"]
    errors = [f"metadata.{k} is not a metadata field the chart sets" for k in set(meta) - METADATA_KEYS]
    if not DNS_SUBDOMAIN.match(meta.get("name", "")):
        errors.append(f"metadata.name {meta.get('name')!r} is not a DNS subdomain")
    if namespaced != ("namespace" in meta):
        errors.append(f"metadata.namespace present={'namespace' in meta}, expected {namespaced}")
    for key in ("labels", "annotations"):
        values = meta.get(key, {})
        if not all(isinstance(v, str) for v in values.values()):
            errors.append(f"metadata.{key} values must be strings: {values}")
    return errors


def check_volume_snapshot_class(obj: Obj) -> list[str]:
    """VolumeSnapshotClass (snapshot.storage.k8s.io/v1): cluster-scoped; driver and
    deletionPolicy required; parameters a string map; nothing else at the top level."""
    errors = _check_metadata(obj, namespaced=False)
    extra = set(obj) - {"apiVersion", "kind", "metadata", "driver", "deletionPolicy", "parameters"}
    errors += [f"unknown field {k}" for k in sorted(extra)]
    if not isinstance(obj.get("driver"), str) or not obj["driver"]:
        errors.append("driver is required and must be a non-empty string")
    if obj.get("deletionPolicy") not in ("Delete", "Retain"):
        errors.append(f"deletionPolicy {obj.get('deletionPolicy')!r} not in Delete|Retain")
    params = obj.get("parameters", {})
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        errors.append("parameters must be a map of strings")
    return errors


def check_service_monitor(obj: Obj) -> list[str]:
    """ServiceMonitor (monitoring.coreos.com/v1): selector and endpoints required; the endpoint
    and relabeling fields the chart uses, with the CRD's types and patterns."""
    errors = _check_metadata(obj, namespaced=True)
    errors += [f"unknown field {k}" for k in sorted(set(obj) - {"apiVersion", "kind", "metadata", "spec"})]
    spec: dict[str, Any] = obj.get("spec", {})
    allowed_spec = {
        "selector",
        "namespaceSelector",
        "endpoints",
        "jobLabel",
        "targetLabels",
        "podTargetLabels",
        "sampleLimit",
        "attachMetadata",
        "scrapeProtocols",
    }
    errors += [f"unknown field spec.{k}" for k in sorted(set(spec) - allowed_spec)]
    selector = spec.get("selector")
    if not isinstance(selector, dict) or set(selector) - {"matchLabels", "matchExpressions"}:
        errors.append(f"spec.selector must be a label selector: {selector}")
    ns_selector = spec.get("namespaceSelector", {})
    if set(ns_selector) - {"any", "matchNames"} or not all(
        isinstance(n, str) for n in ns_selector.get("matchNames", [])
    ):
        errors.append(f"spec.namespaceSelector invalid: {ns_selector}")
    endpoints = spec.get("endpoints")
    if not isinstance(endpoints, list) or not endpoints:
        errors.append("spec.endpoints must be a non-empty list")
        return errors
    for i, endpoint in enumerate(endpoints):
        errors += [f"unknown field spec.endpoints[{i}].{k}" for k in sorted(set(endpoint) - ENDPOINT_KEYS)]
        if not isinstance(endpoint.get("port"), str):
            errors.append(f"spec.endpoints[{i}].port must be a port name (string)")
        for key in ("interval", "scrapeTimeout"):
            if key in endpoint and not PROM_DURATION.match(str(endpoint[key])):
                errors.append(f"spec.endpoints[{i}].{key} {endpoint[key]!r} is not a Prometheus duration")
        for j, relabel in enumerate(endpoint.get("relabelings", [])):
            allowed = {
                "action",
                "sourceLabels",
                "separator",
                "targetLabel",
                "regex",
                "modulus",
                "replacement",
            }
            errors += [f"unknown field relabelings[{j}].{k}" for k in sorted(set(relabel) - allowed)]
            if relabel.get("action", "replace") not in RELABEL_ACTIONS:
                errors.append(f"relabelings[{j}].action {relabel.get('action')!r} unknown")
    return errors


CRD_CHECKS: dict[tuple[str, str], Callable[[Obj], list[str]]] = {
    ("snapshot.storage.k8s.io/v1", "VolumeSnapshotClass"): check_volume_snapshot_class,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor,
}


def _validate(obj: Obj, version: str) -> list[str]:
    ident = f"{obj['kind']}/{obj['metadata']['name']}"
    crd_check = CRD_CHECKS.get((obj["apiVersion"], obj["kind"]))
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        if crd_check is None:
            return [f"{ident}: kubernetes-validate {version} has no schema and no CRD check exists"]
        return [f"{ident}: {e}" for e in crd_check(obj)]
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        return [f"{ident}: {path}: {e.message}"]
    if crd_check is not None:
        return [f"{ident}: kubernetes-validate now ships a schema; drop the hand-written CRD check"]
    return []


@pytest.mark.parametrize("version", NEWEST_KUBE_VERSIONS)
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_rendered_objects_validate_strictly(option: str, version: str) -> None:
    objs = render(option)
    assert objs
    errors = [err for obj in objs for err in _validate(obj, version)]
    assert not errors, "\n".join(errors)


def test_crd_kinds_are_checked() -> None:
    """The option sets exercise both CRD kinds, so their checks above really ran."""
    rendered = {(o["apiVersion"], o["kind"]) for option in OPTIONS for o in render(option)}
    assert set(CRD_CHECKS) <= rendered


@pytest.mark.parametrize("version", NEWEST_KUBE_VERSIONS)
def test_strict_validation_catches_unknown_fields(version: str) -> None:
    """A typo in a container spec is an error in strict mode: the validator is not a no-op."""
    daemonset = find(render("default"), "DaemonSet")
    daemonset["spec"]["template"]["spec"]["containers"][0]["mountPropogation"] = "Bidirectional"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, version, strict=True)


def test_crd_checks_catch_mistakes() -> None:
    vsc = find(render("default"), "VolumeSnapshotClass")
    assert check_volume_snapshot_class(vsc) == []
    assert check_volume_snapshot_class({**vsc, "deletionPolicy": "Recycle"})
    assert check_volume_snapshot_class({**vsc, "driverName": vsc["driver"]})
    monitor = find(render("metrics-servicemonitor"), "ServiceMonitor")
    assert check_service_monitor(monitor) == []
    broken = {**monitor, "spec": {**monitor["spec"], "endpoints": [{"port": 9842, "interval": "30 s"}]}}
    assert len(check_service_monitor(broken)) == 2
