"""A volume's capacity holds against its hostile tenant and an unlucky operator, on the real kernel.

The tenant is a process with uid 65534 and no capabilities inside its volume (tests/tenant.py). It
nests subvolumes — plainly, with an empty qgroup_inherit list, or with its neighbour's qgroup — and
writes past its capacity; the operator removes limits by hand or turns quotas off and restarts. After
the driver's repair (simple quotas: at once for plain creates; else the nested-subvolume scan, and
under full qgroups the rescan it starts) a write gets EDQUOT at the volume's capacity, the volume's
usage includes the nested data and the neighbour is charged nothing.
"""

import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from btrfs_core import filesystem, quota
from btrfs_core.backend import KernelBackend
from btrfs_core.errors import KernelError
from btrfs_core.maintenance import Reconciler
from btrfs_core.models import QuotaMode
from btrfs_core.pool import Pool
from btrfs_exporter import build_registry
from tests.conftest import kernel_skip_reason
from tests.exporter.helpers import btrfs
from tests.support import loop_pool
from tests.tenant import as_pod, hand_to_pod, make_subvolume, write_until_refused

pytestmark = pytest.mark.kernel

MiB = 1 << 20
CAPACITY = 16 * MiB
SLACK = 256 << 10  # tree blocks of the volume and of its nested subvolumes count against the limit
DRIVER = "btrfs.csi.test"
MODES = pytest.mark.parametrize("mode", [QuotaMode.FULL, QuotaMode.SIMPLE], ids=["full", "simple"])


class Node:
    """A driver on one pool: the pool and its reconciler, as `btrfs-csi serve` runs them."""

    def __init__(self, mount: Path, mode: str = "auto") -> None:
        self.mount = mount
        self.pool = Pool.open(mount, quota_mode=mode)
        metrics = build_registry(self.pool, DRIVER)
        self.registry: CollectorRegistry = metrics.registry
        self.reconciler = Reconciler(self.pool, metrics.reconciler_metrics)

    def repair(self) -> None:
        """A reconciler round and a nested-subvolume scan, then the rescan they started (full)."""
        self.reconciler.run_once()
        self.reconciler.scan_nested()
        quota.wait_rescan(self.mount)
        assert not self.pool.stats.quota_status().inconsistent

    def sample(self, name: str, **labels: str) -> float:
        found = self.registry.get_sample_value(name, labels)
        assert found is not None, f"{name}{labels} not exported"
        return found

    def actions(self, action: str) -> float:
        return self.sample("btrfs_csi_reconciler_actions_total", action=action)

    def tenant_dir(self, volume_id: str) -> Path:
        path = self.pool.volume_path(volume_id)
        hand_to_pod(path)
        return path

    def used(self, volume_id: str) -> int:
        filesystem.sync(self.pool.root)
        return self.pool.stats.volume_usage(volume_id).referenced


@pytest.fixture
def mount() -> Iterator[Path]:
    reason = kernel_skip_reason()
    if reason:
        pytest.skip(reason)
    with loop_pool(prefix="btrfs-csi-tenant-") as mountpoint:
        yield mountpoint


def fill(directory: Path, name: str, most: int = 4 * CAPACITY) -> dict[str, int]:
    result: dict[str, int] = as_pod(directory, lambda: write_until_refused(name, most))
    return result


def nest(directory: Path, name: str, inherit: list[int] | None) -> int:
    subvolume_id: int = as_pod(directory, lambda: make_subvolume(name, inherit))
    return subvolume_id


def assert_held(node: Node, volume_id: str, stopped: dict[str, int], before: int = 0) -> None:
    """The tenant's write stopped with EDQUOT at the capacity, and the volume's usage shows it."""
    assert stopped["errno"] == errno.EDQUOT, stopped
    assert CAPACITY - SLACK <= before + stopped["written"] <= CAPACITY, stopped
    assert node.used(volume_id) >= before + stopped["written"]


@MODES
@pytest.mark.parametrize("how", ["plain", "empty-inherit", "neighbour-inherit"])
def test_subvolumes_a_tenant_nests_count_against_its_volume(mount: Path, mode: QuotaMode, how: str) -> None:
    node = Node(mount, mode.value)
    volume = node.pool.create_volume("victim", CAPACITY)
    neighbour = node.pool.create_volume("neighbour", CAPACITY)
    inherit = {"plain": None, "empty-inherit": [], "neighbour-inherit": [neighbour.qgroup]}[how]
    tenant = node.tenant_dir(volume.id)
    nested = nest(tenant, "nested", inherit)
    repaired_at_once = mode is QuotaMode.SIMPLE and how == "plain"  # the kernel's auto-inherit
    if not repaired_at_once:
        # Until the scan, the nested subvolume is outside the volume's qgroup: its data escapes.
        early = fill(tenant / "nested", "early", 4 * MiB)
        assert early == {"written": 4 * MiB, "errno": 0}
    else:
        early = {"written": 0}

    node.repair()
    assert node.sample("btrfs_csi_nested_subvolumes_out_of_place") == (0 if repaired_at_once else 1)
    assert node.actions("reparent_subvolume") == (0 if repaired_at_once else 1)
    assert quota.relations(mount)[nested] == {volume.qgroup}

    assert_held(node, volume.id, fill(tenant / "nested", "late"), before=early["written"])
    assert node.used("neighbour") < MiB  # the neighbour's qgroup was named, and charged nothing
    assert fill(node.tenant_dir(neighbour.id), "own")["written"] >= CAPACITY - SLACK
    node.reconciler.scan_nested()
    assert node.sample("btrfs_csi_nested_subvolumes_out_of_place") == 0


@MODES
def test_subvolumes_nested_deeper_and_after_a_repair_are_found_too(mount: Path, mode: QuotaMode) -> None:
    node = Node(mount, mode.value)
    volume = node.pool.create_volume("victim", CAPACITY)
    tenant = node.tenant_dir(volume.id)
    outer = nest(tenant, "outer", [])
    as_pod(tenant, lambda: os.makedirs("outer/a/b"))
    inner = nest(tenant / "outer" / "a" / "b", "inner", [])
    node.repair()
    assert node.actions("reparent_subvolume") == 2
    relations = quota.relations(mount)
    assert relations[outer] == relations[inner] == {volume.qgroup}
    assert_held(node, volume.id, fill(tenant / "outer" / "a" / "b" / "inner", "f"))


@MODES
def test_a_limit_removed_by_hand_comes_back(mount: Path, mode: QuotaMode) -> None:
    node = Node(mount, mode.value)
    volume = node.pool.create_volume("victim", CAPACITY)
    btrfs("qgroup", "limit", "none", quota.show(volume.qgroup), str(mount))
    node.repair()
    assert node.actions("restore_limit") == 1
    assert node.pool.stats.volume_usage(volume.id).limit == CAPACITY
    assert_held(node, volume.id, fill(node.tenant_dir(volume.id), "f"))


@MODES
def test_quotas_disabled_and_a_restart_bring_back_mode_and_limits(mount: Path, mode: QuotaMode) -> None:
    node = Node(mount, mode.value)
    volume = node.pool.create_volume("victim", CAPACITY)
    tenant = node.tenant_dir(volume.id)
    nested = nest(tenant, "nested", None)
    node.repair()
    btrfs("quota", "disable", str(mount))
    assert node.pool.stats.quota_status().mode is QuotaMode.OFF

    restarted = Node(mount)  # the default configuration: quota mode "auto"
    restarted.repair()
    assert restarted.pool.stats.quota_status().mode is mode
    assert restarted.actions("restore_qgroup") == 1 and restarted.actions("restore_limit") == 1
    assert restarted.actions("reparent_subvolume") == 2  # the volume's own and the nested one
    assert quota.relations(mount)[nested] == {volume.qgroup}
    assert_held(restarted, volume.id, fill(tenant / "nested", "f"))


def make_old_volume(pool: Pool, name: str) -> int:
    """A volume exactly as the driver made it before level-1 qgroups: limit on its own 0/N, no qgroup
    in its metadata."""
    staged = pool.staging_dir / name
    btrfs("subvolume", "create", str(staged))
    meta = {"kind": "volume", "name": name, "capacity": CAPACITY, "source": None, "metadata": {}}
    os.setxattr(staged, KernelBackend.metadata_xattr, json.dumps(meta).encode())
    btrfs("qgroup", "limit", str(CAPACITY), str(staged))
    os.rename(staged, pool.volumes_dir / name)
    subvolume_id: int = pool.get_volume(name).subvolume_id
    return subvolume_id


@MODES
def test_volumes_of_the_old_shape_are_migrated_at_start_up_even_when_cut_short(
    mount: Path, mode: QuotaMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = Node(mount, mode.value)
    first, second = make_old_volume(old.pool, "first"), make_old_volume(old.pool, "second")
    tenant = old.tenant_dir("first")
    nest(tenant, "nested", None)
    early = fill(tenant / "nested", "early", 4 * MiB)
    assert early["errno"] == 0  # the old shape: nested data escaped the limit on 0/N

    # A start-up killed in the middle of migrating: the second volume's qgroup assignment fails.
    cut = Node(mount)
    real_assign = KernelBackend.assign_qgroup

    def failing(self: KernelBackend, member: int, parent: int, assign: bool) -> None:
        if member == second:
            raise KernelError("qgroup assign", errno.EIO, "killed")
        real_assign(self, member, parent, assign)

    monkeypatch.setattr(KernelBackend, "assign_qgroup", failing)
    cut.reconciler.run_once()
    assert cut.actions("migrate_volume") == 1
    monkeypatch.undo()

    restarted = Node(mount)
    restarted.repair()
    assert restarted.actions("migrate_volume") == 0  # named already: finished, not migrated again
    assert restarted.actions("restore_limit") == 1  # the second's limit, not moved before the cut
    for name, subvolume_id in (("first", first), ("second", second)):
        volume = restarted.pool.get_volume(name)
        assert volume.qgroup >= quota.LEVEL1
        assert quota.relations(mount)[subvolume_id] == {volume.qgroup}
        assert quota.usage(mount, subvolume_id).limit is None
        assert restarted.pool.stats.volume_usage(name).limit == CAPACITY
    assert_held(restarted, "first", fill(tenant / "nested", "late"), before=early["written"])
    again = Node(mount)
    again.repair()
    for action in ("migrate_volume", "restore_limit", "restore_qgroup", "reparent_subvolume"):
        assert again.actions(action) == 0, action


def test_a_tenant_cannot_touch_qgroups_itself(mount: Path) -> None:
    node = Node(mount)
    volume = node.pool.create_volume("victim", CAPACITY)

    def remove_limit() -> int | None:
        try:
            quota.set_limit(Path("."), volume.qgroup, None)
        except KernelError as exc:
            return exc.errno
        return None

    assert as_pod(node.tenant_dir(volume.id), remove_limit) == errno.EPERM
    assert node.pool.stats.volume_usage(volume.id).limit == CAPACITY


def test_metrics_follow_a_volume_migrated_after_the_first_scrape(mount: Path) -> None:
    node = Node(mount)
    make_old_volume(node.pool, "old")
    before = node.registry.get_sample_value("btrfs_csi_volume_limit_bytes", volume_labels("old"))
    assert before == CAPACITY  # the old shape: the limit on the subvolume's own qgroup
    node.repair()  # the collector's index still holds the volume as read before its migration
    assert node.actions("migrate_volume") == 1
    after = node.registry.get_sample_value("btrfs_csi_volume_limit_bytes", volume_labels("old"))
    assert after == CAPACITY


def volume_labels(volume_id: str) -> dict[str, str]:
    return {"volume_id": volume_id, "pvc_namespace": "", "pvc_name": ""}
