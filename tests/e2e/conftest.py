"""Fixtures of the e2e suite. Nothing here fakes a cluster: the `cluster` fixture brings up a real
one with the provider this machine gets (providers.py) and tears it down afterwards. Without
BTRFS_CSI_E2E=1 (tests/e2e/run.sh, `make e2e`) every e2e test is skipped, saying why; with it, a
missing prerequisite is an error, never a silent skip."""

from __future__ import annotations

import os
import uuid
from collections.abc import Generator, Iterator
from typing import Any

import pytest

from tests.e2e.kube import Kube
from tests.e2e.providers import Provider, bring_up, choose

OPT_IN = "BTRFS_CSI_E2E"
_made: list[tuple[str, str]] = []  # (provider, Kubernetes version) of the cluster this run made


def e2e_skip_reason() -> str | None:
    if os.environ.get(OPT_IN) != "1":
        return f"the e2e suite brings up a real cluster (minutes): run it with `make e2e` ({OPT_IN}=1)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = e2e_skip_reason()
    if reason:
        for item in items:
            if item.get_closest_marker("e2e"):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def cluster() -> Iterator[Provider]:
    name, missing = choose()
    if missing:
        pytest.fail(f"e2e provider {name} cannot run here, missing: " + "; ".join(missing), pytrace=False)
    with bring_up(name, keep=os.environ.get("BTRFS_CSI_E2E_KEEP") == "1") as made:
        _made.append((made.provider, made.version()))
        yield made


@pytest.fixture
def kube(cluster: Provider, request: pytest.FixtureRequest) -> Iterator[Kube]:
    """A fresh namespace per test; on failure the driver's and the node's logs go to the report."""
    api: Any = cluster.api()
    view = Kube(api, f"e2e-{uuid.uuid4().hex[:8]}", cluster.pod_image)
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


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _made:
        return
    passed = [r for r in terminalreporter.stats.get("passed", []) if "e2e" in r.keywords]
    failed = [r for r in terminalreporter.stats.get("failed", []) if "e2e" in r.keywords]
    provider, version = _made[0]
    line = f"e2e cluster: {provider} kubernetes {version}, {len(passed)} scenarios passed"
    terminalreporter.write_line(line + (f", {len(failed)} failed" if failed else ""))
