"""Static checks of the driver image definition (the image is built only by the e2e suite)."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib

from tests.chart.helm_render import REPO, containers, find, init_containers, render

DOCKERFILE = (REPO / "Dockerfile").read_text()
IGNORED = [
    line.strip()
    for line in (REPO / ".dockerignore").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]


def instructions(name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.+)$", DOCKERFILE, re.MULTILINE)]


def ignored(path: str) -> bool:
    return any(fnmatch.fnmatch(path, pattern) or path == pattern for pattern in IGNORED)


def test_base_is_slim_python_311() -> None:
    (default_base,) = [a for a in instructions("ARG") if a.startswith("PYTHON_IMAGE=")]
    assert default_base.split("=", 1)[1].startswith("python:3.11-slim")
    assert instructions("FROM") == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE}"]


def test_entrypoint_is_what_the_chart_runs() -> None:
    (entrypoint,) = instructions("ENTRYPOINT")
    ds = find(render("loopfile-pool"), "DaemonSet")
    assert json.loads(entrypoint) == containers(ds)["btrfs-csi"]["command"]
    # The loopfile init container runs /bin/sh and mkfs.btrfs from the same image.
    assert init_containers(ds)["pool-init"]["command"][0] == "/bin/sh"
    assert "btrfs-progs" in DOCKERFILE


def test_runs_as_root_with_the_reason_written_down() -> None:
    assert instructions("USER") == ["0:0"]
    assert "CAP_SYS_ADMIN" in DOCKERFILE and "Bidirectional" in DOCKERFILE


def test_oci_labels() -> None:
    for label in ("title", "description", "version", "revision", "licenses", "base.name"):
        assert f"org.opencontainers.image.{label}=" in DOCKERFILE, label


def test_build_context_has_the_package_and_nothing_else() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert not ignored(pattern.rstrip("*")), pattern
    assert not ignored("pyproject.toml") and not ignored("README.md")
    for junk in (".git", ".venv", "tests", "charts", "manifests", "bench", "demo"):
        assert ignored(junk), junk
