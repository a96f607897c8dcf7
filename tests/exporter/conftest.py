"""Fixtures for the exporter tests: a real pool in each quota mode on a fresh loop-device btrfs."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from btrfs_core.pool import Pool


@pytest.fixture(params=["full", "simple"])
def quota_mode(request: pytest.FixtureRequest) -> str:
    mode: str = request.param
    return mode


@pytest.fixture
def pool(btrfs_mount: Path, quota_mode: str) -> Iterator[Pool]:
    """A pool on a fresh filesystem whose quotas were off, opened in the given mode."""
    yield Pool.open(btrfs_mount, quota_mode=quota_mode)
