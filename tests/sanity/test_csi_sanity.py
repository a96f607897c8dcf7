"""csi-sanity, the upstream CSI conformance suite, against `btrfs-csi serve` on a loop-device pool.

tools/csi-sanity builds the pinned binary into a cache outside the repository (`make test` runs it before
pytest, so here it is a file check). The suite's JSON report is the result: any spec that fails fails this
test with its message, and the specs it skips must be exactly those the README's Conformance section
lists as capabilities the driver does not offer.
"""

import json
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.csi.test_cli import REPO, served
from tests.sanity.conftest import SUMMARY

MiB = 1 << 20
BUILD_SCRIPT = REPO / "tools" / "csi-sanity"
NO_TOOLCHAIN = 3  # tools/csi-sanity's exit code when there is no Go to build with
SUITE_TIMEOUT = 600  # seconds; the suite takes well under a minute, this only bounds a hang
# Ginkgo's states for a spec that ran and passed, was skipped at run time, or is disabled upstream (PIt).
NOT_FAILED = {"passed", "skipped", "pending"}


@dataclass(frozen=True)
class Spec:
    name: str
    state: str
    message: str


@pytest.fixture(scope="session")
def csi_sanity() -> Path:
    result = subprocess.run([BUILD_SCRIPT], capture_output=True, text=True, timeout=1800)
    if result.returncode == NO_TOOLCHAIN:
        pytest.skip(result.stderr.strip())
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip())


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # unix socket paths are limited to 107 bytes and pytest's tmp_path is long
    directory = Path(tempfile.mkdtemp(prefix="sanity-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def specs(report: Path) -> tuple[int, list[Spec]]:
    """The random seed (--ginkgo.seed=N repeats the order) and the It specs of a ginkgo JSON report
    (suite set-up and tear-down nodes left out)."""
    suites: list[dict[str, Any]] = json.loads(report.read_text())
    return suites[0]["SuiteConfig"]["RandomSeed"], [
        Spec(
            " ".join([*(spec.get("ContainerHierarchyTexts") or []), spec["LeafNodeText"]]),
            spec["State"],
            (spec.get("Failure") or {}).get("Message", ""),
        )
        for suite in suites
        for spec in suite.get("SpecReports") or []
        if spec.get("LeafNodeType") == "It"
    ]


def documented_skips() -> set[str]:
    """The skip messages in the first column of the README's Conformance table."""
    section = README_SECTION.search((REPO / "README.md").read_text())
    assert section, "README.md has no '## Conformance' section"
    rows = [line for line in section.group(0).splitlines() if line.startswith("| `")]
    return {message for row in rows for message in re.findall(r"`([^`]+)`", row.split("|")[1])}


README_SECTION = re.compile(r"^## Conformance\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)


@pytest.mark.kernel
def test_csi_sanity_passes_on_a_real_pool(
    csi_sanity: Path, btrfs_mount: Path, short_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    socket = short_dir / "csi.sock"
    report = tmp_path / "report.json"
    # What the ModifyVolume specs (and CreateVolume with a VolumeAttributesClass) send as mutable_parameters.
    mutable = tmp_path / "mutable-parameters.yaml"
    mutable.write_text("compression: zstd\n")
    with served(socket, btrfs_mount):
        result = subprocess.run(
            [
                str(csi_sanity),
                f"--csi.endpoint=unix://{socket}",
                f"--csi.mountdir={tmp_path / 'mount'}",  # csi-sanity makes these two and removes them
                f"--csi.stagingdir={tmp_path / 'staging'}",
                f"--csi.testvolumesize={16 * MiB}",
                f"--csi.testvolumeexpandsize={32 * MiB}",
                f"--csi.testvolumemutableparameters={mutable}",
                f"--ginkgo.json-report={report}",
                f"--ginkgo.timeout={SUITE_TIMEOUT}s",
                "--ginkgo.no-color",
            ],
            capture_output=True,
            text=True,
            timeout=SUITE_TIMEOUT + 60,  # subprocess.run kills the suite if it overruns its own timeout
        )
    output = result.stdout[-4000:] + result.stderr[-4000:]
    assert report.exists(), output
    seed, ran = specs(report)
    counts = Counter(spec.state for spec in ran)
    tally = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
    request.config.stash[SUMMARY] = f"{csi_sanity.parent.parent.name} (seed {seed}): {tally}"
    failed = [f"{spec.name} [{spec.state}]: {spec.message}" for spec in ran if spec.state not in NOT_FAILED]
    assert not failed, "\n\n".join(failed)
    skipped = {spec.message for spec in ran if spec.state == "skipped"}
    assert skipped == documented_skips(), "skips differ from the README's Conformance table"
    assert counts["passed"] > 0 and result.returncode == 0, output
