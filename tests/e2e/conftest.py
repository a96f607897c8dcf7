"""Fixtures of the kind e2e suite. Nothing here fakes a cluster: without Docker (a running daemon),
kind and root, every e2e test is skipped with the list of what is missing."""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from tests.e2e.cluster import Cluster, e2e_cluster, missing_prerequisites
from tests.e2e.kube import Kube

OPT_IN = "BTRFS_CSI_E2E"


def e2e_skip_reason() -> str | None:
    missing = missing_prerequisites()
    if missing:
        return "e2e needs " + "; ".join(missing)
    if os.environ.get(OPT_IN) != "1":
        return (
            f"Docker, kind and root are available, but the e2e suite creates a kind cluster (minutes): "
            f"run it with tests/e2e/run.sh (or {OPT_IN}=1 pytest -m e2e tests/e2e)"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_items = [item for item in items if item.get_closest_marker("e2e")]
    if not e2e_items:
        return
    reason = e2e_skip_reason()
    if reason:
        for item in e2e_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    reason = e2e_skip_reason()
    if reason:
        pytest.skip(reason)
    with e2e_cluster(keep=os.environ.get("BTRFS_CSI_E2E_KEEP") == "1") as made:
        yield made


@pytest.fixture
def kube(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Kube]:
    """A fresh namespace per test; on failure the driver's logs are attached to the report."""
    api: Any = cluster.api()
    view = Kube(api, f"e2e-{uuid.uuid4().hex[:8]}")
    view.create_namespace()
    yield view
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(cluster.diagnostics())
    view.delete_namespace()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
