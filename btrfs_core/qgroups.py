"""Each volume's quota: its own level-1 qgroup, the limit on it, and what is nested in it.

A volume's limit sits on a level-1 qgroup of its own that holds the volume's subvolume and every
subvolume a pod nests in it. This module makes those qgroups, waits for and starts the rescans full
qgroups need around qgroup changes, reads volumes' usage there, and brings quotas back to what the
metadata says when they were changed behind the driver's back (repair, reparent_nested).
"""

import errno
import logging
import secrets
from collections.abc import Callable, Iterable, Mapping

from btrfs_core import ioctl, quota
from btrfs_core.errors import BtrfsCoreError, InUse, InvalidArgument, KernelError, NotFound
from btrfs_core.models import NestedScan, QgroupUsage, QuotaMode, QuotaRepairs, Volume
from btrfs_core.shared import PoolShared

# Each volume's level-1 qgroup is 1/(this bit | 47 random bits): a pod cannot guess a neighbour's to
# pass it to SUBVOL_CREATE_V2, and the bit tells the driver's qgroups from an operator's own.
_GROUP_MARK = 1 << 47

log = logging.getLogger(__name__)


class VolumeQgroups:
    """The quota side of one pool. Shares the pool's lock, which guards the subvolume -> qgroup index."""

    def __init__(self, shared: PoolShared, list_volumes: Callable[[], list[Volume]]) -> None:
        self.root = shared.root
        self._volumes_dir = shared.root / "volumes"
        self._fs, self._meta, self._lock, self._commit = shared.fs, shared.meta, shared.lock, shared.commit
        self._list_volumes = list_volumes
        self._volume_groups: dict[int, int] | None = None  # read on first use (see known)
        # Made for a volume being built (outside the lock), which no volume names yet: not orphans.
        self._unnamed: set[int] = set()

    def ensure_quota(self, wanted: str) -> None:
        """Turns quotas on when they are off: in the configured mode, or with "auto" in the mode the
        pool had (recorded on its root whenever the driver sees quotas on), else simple quotas when
        the kernel has them. The limits come back with repair_quotas."""
        mode = self._fs.quota_status().mode
        if mode is QuotaMode.OFF:
            recorded = self._meta.quota_mode(self.root)
            if wanted != "auto":
                self._fs.enable_quota(QuotaMode(wanted))
            elif recorded is not None:
                log.warning("quotas were off on pool %s: enabling its mode, %s", self.root, recorded.value)
                self._fs.enable_quota(recorded)
            else:
                try:
                    self._fs.enable_quota(QuotaMode.SIMPLE)
                except KernelError as exc:
                    if exc.errno != errno.EINVAL:  # EINVAL: this kernel has no simple quotas
                        raise
                    self._fs.enable_quota(QuotaMode.FULL)
            mode = self._fs.quota_status().mode
            self._commit.commit()
        elif wanted != "auto" and mode is not QuotaMode(wanted):
            raise InvalidArgument(
                f"pool {self.root} already uses {mode.value} quotas, not {wanted}; "
                "switching needs quotas disabled first"
            )
        if mode is not QuotaMode.OFF and self._meta.quota_mode(self.root) is not mode:
            self._meta.record_quota_mode(self.root, mode)

    def new_group(self) -> int:
        """A new level-1 qgroup, no orphan until joined (or dropped)."""
        group = quota.LEVEL1 | _GROUP_MARK | secrets.randbits(47)
        with self._lock:
            self._unnamed.add(group)
        try:
            self._fs.create_qgroup(group)
        except BaseException:
            with self._lock:
                self._unnamed.discard(group)
            raise
        return group

    def drop_group(self, group: int) -> bool:
        """Destroys a volume's level-1 qgroup; False when it cannot go yet (a member the cleaner has
        not dropped: EBUSY): repair_quotas retries it as an orphan."""
        with self._lock:
            self._unnamed.discard(group)
        try:
            self._fs.destroy_qgroup(group)
        except NotFound:
            return True
        except BtrfsCoreError as exc:
            log.debug("qgroup %s not removed yet: %s", quota.show(group), exc)
            return False
        return True

    def rescan_if_inconsistent(self) -> None:
        """Full qgroups: a rescan when accounting is inconsistent, waited for: the kernel enforces no
        limit until it ends. The flag is read from the quota tree, as of the last commit: callers
        commit first (a snapshot commits by itself)."""
        status = self._fs.quota_status()
        if status.mode is QuotaMode.FULL and status.inconsistent:
            self._fs.rescan_quota()
            self._fs.wait_rescan()

    def after_rescan(self) -> None:
        """Full qgroups: waits for a running rescan before a qgroup change (a snapshot or clone of a
        volume, an assignment). A change made while one runs is missing from its result, which then
        says consistent with wrong numbers and no limit enforced (measured on 6.18)."""
        if self._fs.quota_status().mode is QuotaMode.FULL:
            self._fs.wait_rescan()

    def clear_limit(self, subvolume_id: int) -> None:
        try:
            limited = self._fs.usage(subvolume_id).limit is not None
        except NotFound:
            return  # no qgroup: quotas are off
        if limited:
            self._fs.set_limit(subvolume_id, None)

    def usage_of(self, groups: Mapping[str, int]) -> dict[str, QgroupUsage]:
        """The usage of each volume id's qgroup, read in one search (two while some volume has not
        been migrated from its level-0 qgroup yet)."""
        found = self._fs.group_usage_all()
        if any(group < quota.LEVEL1 for group in groups.values()):
            found.update(self._fs.usage_all())
        return {volume_id: found[group] for volume_id, group in groups.items() if group in found}

    def current(self, volume: Volume) -> int:
        """The qgroup of a Volume read before its migration (a caller's cache may hold one): the one
        repair_quotas gave it since, if any."""
        if volume.qgroup >= quota.LEVEL1 or self._volume_groups is None:
            return volume.qgroup
        return self._volume_groups.get(volume.subvolume_id, volume.qgroup)

    def known(self) -> dict[int, int]:
        """Each volume's subvolume id -> its level-1 qgroup, read on first use and kept up to date by
        create, delete and repair_quotas (needs the lock): the nested-subvolume scan runs every few
        seconds and must not read every volume's metadata each time."""
        if self._volume_groups is None:
            self._volume_groups = {
                volume.subvolume_id: volume.qgroup
                for volume in self._list_volumes()
                if volume.qgroup >= quota.LEVEL1
            }
        return self._volume_groups

    def rescan(self) -> None:
        """Rescans full qgroup accounting; simple quotas have nothing to rescan."""
        if self._fs.quota_status().mode is QuotaMode.FULL:
            self._fs.rescan_quota()

    def repair(self, on_migrated: Callable[[Volume, int], None]) -> QuotaRepairs:
        """Makes every volume's quota what its metadata says, the capacity there being the truth.

        Per volume: its level-1 qgroup exists (recreated after quotas were turned off and on again),
        carries exactly the capacity as limit (re-applied after `btrfs qgroup limit none`), and its
        subvolume's own qgroup carries none. A volume made before level-1 qgroups is migrated: a new
        qgroup is created, named in the metadata, its subvolume assigned, the limit moved; each step
        is idempotent, so a crash midway is finished by the next pass. Level-1 qgroups of this driver
        that no volume names (a crash between creating one and its volume, or a delete the kernel
        refused with EBUSY) are removed once they have no live member. Nothing happens with quotas off.
        """
        if self._fs.quota_status().mode is QuotaMode.OFF:
            return QuotaRepairs()
        counts = {"migrated": 0, "qgroups_restored": 0, "limits_restored": 0, "orphans_removed": 0}
        with self._lock:
            self.after_rescan()
            groups = self._fs.group_usage_all()
            level0 = self._fs.usage_all()
            named: dict[int, int] = {}
            for volume in self._list_volumes():
                try:
                    self._repair_volume(volume, groups, level0, named, counts, on_migrated)
                except BtrfsCoreError as exc:
                    log.warning("quota of volume %s not repaired: %s", volume.id, exc)
            self._volume_groups = named
            unnamed = set(groups) - set(named.values()) - self._unnamed
            counts["orphans_removed"] = self._remove_orphan_groups(unnamed)
        repairs = QuotaRepairs(**counts)
        if repairs != QuotaRepairs():
            self._commit.commit()
            self.rescan_if_inconsistent()
        return repairs

    def _repair_volume(
        self,
        volume: Volume,
        groups: Mapping[int, QgroupUsage],
        level0: Mapping[int, QgroupUsage],
        named: dict[int, int],
        counts: dict[str, int],
        on_migrated: Callable[[Volume, int], None],
    ) -> None:
        group = volume.qgroup
        if group < quota.LEVEL1:
            group = self.new_group()
            path = self._volumes_dir / volume.id
            meta = self._meta.read(path)
            meta["qgroup"] = group
            self._meta.write(path, meta)  # from here on the qgroup is the volume's, not an orphan
            self._unnamed.discard(group)
            self._fs.assign_qgroup(volume.subvolume_id, group, True)
            on_migrated(volume, group)
            log.info("volume %s migrated to its own qgroup %s", volume.id, quota.show(group))
            counts["migrated"] += 1
        elif group not in groups:
            self._fs.create_qgroup(group)
            log.warning("volume %s: its qgroup %s was gone, recreated", volume.id, quota.show(group))
            counts["qgroups_restored"] += 1
        named[volume.subvolume_id] = group
        current = groups.get(group)
        if volume.qgroup < quota.LEVEL1:
            self._fs.set_limit(group, volume.capacity)  # moved, not restored
        elif current is None or current.limit != volume.capacity:
            self._fs.set_limit(group, volume.capacity)
            log.warning(
                "volume %s: limit %s restored to its capacity %d",
                volume.id,
                "none" if current is None or current.limit is None else current.limit,
                volume.capacity,
            )
            counts["limits_restored"] += 1
        own = level0.get(volume.subvolume_id)
        if own is not None and own.limit is not None:
            self._fs.set_limit(volume.subvolume_id, None)  # the old shape's limit, or one set by hand

    def _remove_orphan_groups(self, candidates: Iterable[int]) -> int:
        """Removes the driver's level-1 qgroups among candidates that have no live member."""
        orphans = [g for g in candidates if g >> quota.LEVEL_SHIFT == 1 and g & _GROUP_MARK]
        if not orphans:
            return 0
        live = self._fs.subvolume_parents()
        members: dict[int, list[int]] = {}
        for member, parents in self._fs.qgroup_relations().items():
            for parent in parents:
                members.setdefault(parent, []).append(member)
        removed = 0
        for group in orphans:
            if any(member in live for member in members.get(group, ())):
                continue  # a pod's nested subvolume joined it: reparent_nested moves it first
            try:
                for member in members.get(group, ()):
                    self._fs.assign_qgroup(member, group, False)  # a stale qgroup of a gone subvolume
            except BtrfsCoreError as exc:
                log.info("orphan qgroup %s: %s", quota.show(group), exc)
                continue
            if self.drop_group(group):
                log.info("removed orphan qgroup %s", quota.show(group))
                removed += 1
        return removed

    def reparent_nested(self) -> NestedScan:
        """Puts every subvolume at or below a volume into exactly that volume's level-1 qgroup.

        A pod may create subvolumes in its volume (no capability needed), joining no qgroup (full
        qgroups; or an empty qgroup_inherit list) or a neighbour's (its qgroup_inherit): each such
        one is taken out of the wrong qgroups and assigned to its volume's. Found from the kernel's
        subvolume tree (root back refs) and the quota tree's relation items, two searches, no path
        walking. Under full qgroups an assignment leaves accounting inconsistent: a rescan starts.
        """
        if self._fs.quota_status().mode is QuotaMode.OFF:
            return NestedScan(0, 0)
        with self._lock:
            volume_groups = dict(self.known())
        relations = self._fs.qgroup_relations()
        holders = self._fs.subvolume_parents()
        wanted: dict[int, int | None] = dict(volume_groups)

        def group_for(subvolume_id: int) -> int | None:
            """The group of the volume at or above a subvolume, walking up its holders once."""
            chain = []
            node: int | None = subvolume_id
            while node is not None and node not in wanted:
                chain.append(node)
                node = holders.get(node)  # None past the top level
            found = wanted[node] if node is not None else None
            for link in chain:
                wanted[link] = found
            return found

        out_of_place = repaired = 0
        for subvolume_id in holders:
            group = group_for(subvolume_id)
            if group is None:
                continue
            parents = {p for p in relations.get(subvolume_id, ()) if p >> quota.LEVEL_SHIFT == 1}
            if parents == {group}:
                continue
            out_of_place += 1
            if out_of_place == 1:
                self.after_rescan()
            try:
                for wrong in parents - {group}:
                    self._fs.assign_qgroup(subvolume_id, wrong, False)
                if group not in parents:
                    self._fs.assign_qgroup(subvolume_id, group, True)
            except BtrfsCoreError as exc:
                log.warning("subvolume %d not moved into qgroup %s: %s", subvolume_id, quota.show(group), exc)
                continue
            log.warning(
                "subvolume %d was in qgroups %s, not its volume's %s: moved",
                subvolume_id,
                ", ".join(quota.show(p) for p in sorted(parents)) or "none",
                quota.show(group),
            )
            repaired += 1
        # Also after a snapshot or clone whose rescan was cancelled by the next change: every few
        # seconds, so full qgroups never stay unenforced for long.
        if repaired:
            self._commit.commit()
        self.rescan_if_inconsistent()
        return NestedScan(out_of_place, repaired)

    def stale(self) -> list[int]:
        """Level-0 qgroups whose subvolume is gone, sorted: kernels before 6.11 leave them, and under
        simple quotas a deleted subvolume's stays while others hold extents charged to it. The qgroups
        are read before the subvolumes, so a subvolume made in between is never taken for gone."""
        qgroups = self._fs.usage_all()
        live = self._fs.subvolume_parents()
        return sorted(q for q in qgroups if q >= ioctl.FIRST_FREE_OBJECTID and q not in live)

    def remove_stale(self, stale: Iterable[int]) -> list[int]:
        """Destroys the stale qgroups `stale` names; returns those removed. One whose subvolume the
        cleaner has not dropped yet answers EBUSY (one gone meanwhile ENOENT): left for next time."""
        removed = []
        for qgroupid in stale:
            try:
                self._fs.destroy_qgroup(qgroupid)
            except (InUse, NotFound):
                continue
            removed.append(qgroupid)
        return removed

    def joined(self, subvolume_id: int, group: int) -> None:
        """A new volume's subvolume and its qgroup (needs the lock; nothing to do before the first read,
        which lists the volume: reading 10,000 volumes is not the first create's business)."""
        self._unnamed.discard(group)
        if self._volume_groups is not None:
            self._volume_groups[subvolume_id] = group

    def left(self, subvolume_id: int) -> None:
        """A deleted volume's subvolume (needs the lock)."""
        if self._volume_groups is not None:
            self._volume_groups.pop(subvolume_id, None)
