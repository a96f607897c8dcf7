"""Quotas and qgroups: mode, enable, rescan, limits, usage of one or all subvolumes, qgroups and relations."""

import functools
from pathlib import Path

from btrfs_core import ioctl, trees
from btrfs_core.errors import InvalidArgument, NotFound
from btrfs_core.models import QgroupUsage, QuotaMode, QuotaStatus
from btrfs_core.subvolume import opened

_STATUS_FLAGS = trees.item_struct(trees.QgroupStatusItem, "flags")
_INFO_RFER_EXCL = trees.item_struct(trees.QgroupInfoItem, "rfer", "excl")
_INFO_EXCL = trees.item_struct(trees.QgroupInfoItem, "excl")
# A QgroupUsage of its fields in one tuple, made without a Python-level call: a scrape makes 20,000.
_usage = functools.partial(tuple.__new__, QgroupUsage)
LEVEL_SHIFT = ioctl.QGROUP_LEVEL_SHIFT
LEVEL1 = 1 << LEVEL_SHIFT  # the first level-1 qgroupid (1/0)


def status(path: Path) -> QuotaStatus:
    """The quota mode and flags, from the status item of the quota tree (absent when quotas are off)."""
    with opened(path) as fd:
        try:
            items = list(
                trees.tree_search(
                    fd,
                    ioctl.QUOTA_TREE,
                    (0, ioctl.QGROUP_STATUS_KEY, 0),
                    (0, ioctl.QGROUP_STATUS_KEY, 0),
                    str(path),
                )
            )
        except NotFound:
            items = []
    if not items:
        return QuotaStatus(QuotaMode.OFF, inconsistent=False, rescan_running=False)
    (flags,) = _STATUS_FLAGS.unpack_from(items[0][3])
    return QuotaStatus(
        mode=QuotaMode.SIMPLE if flags & ioctl.QGROUP_STATUS_SIMPLE else QuotaMode.FULL,
        inconsistent=bool(flags & ioctl.QGROUP_STATUS_INCONSISTENT),
        rescan_running=bool(flags & ioctl.QGROUP_STATUS_RESCAN),
    )


def enable(path: Path, mode: QuotaMode) -> None:
    """Turns quotas on in the given mode and waits for the initial rescan."""
    commands = {QuotaMode.FULL: ioctl.QUOTA_CTL_ENABLE, QuotaMode.SIMPLE: ioctl.QUOTA_CTL_ENABLE_SIMPLE}
    if mode not in commands:
        raise InvalidArgument(f"quota enable: mode {mode.value!r} is not a quota mode")
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_QUOTA_CTL, ioctl.QuotaCtlArgs(cmd=commands[mode]), "quota enable", str(path))
    wait_rescan(path)


def rescan(path: Path) -> None:
    """Starts a rescan of full qgroup accounting (clears the inconsistent flag when it ends)."""
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_QUOTA_RESCAN, ioctl.QuotaRescanArgs(), "quota rescan", str(path))


def wait_rescan(path: Path) -> None:
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_QUOTA_RESCAN_WAIT, 0, "quota rescan wait", str(path))


def set_limit(path: Path, qgroupid: int, limit: int | None) -> None:
    """Limits the referenced bytes of a qgroup (a subvolume id is its level-0 qgroup); None removes it."""
    if limit is not None and not 0 < limit < ioctl.U64_MAX:
        raise InvalidArgument(f"qgroup limit {limit} for qgroup {show(qgroupid)} is out of range")
    value = ioctl.U64_MAX if limit is None else limit  # the all-ones value clears the limit
    args = ioctl.QgroupLimitArgs(
        qgroupid=qgroupid, lim=ioctl.QgroupLimit(flags=ioctl.QGROUP_LIMIT_MAX_RFER, max_rfer=value)
    )
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_QGROUP_LIMIT, args, "qgroup limit", f"qgroup {show(qgroupid)}")


def show(qgroupid: int) -> str:
    """A qgroupid as btrfs writes it: level/id."""
    return f"{qgroupid >> LEVEL_SHIFT}/{qgroupid & (LEVEL1 - 1)}"


def create_qgroup(path: Path, qgroupid: int) -> None:
    with opened(path) as fd:
        args = ioctl.QgroupCreateArgs(create=1, qgroupid=qgroupid)
        ioctl.call(fd, ioctl.IOC_QGROUP_CREATE, args, "qgroup create", f"qgroup {show(qgroupid)}")


def destroy_qgroup(path: Path, qgroupid: int) -> None:
    """Destroys a qgroup; one that still has members answers InUse (EBUSY)."""
    with opened(path) as fd:
        args = ioctl.QgroupCreateArgs(create=0, qgroupid=qgroupid)
        ioctl.call(fd, ioctl.IOC_QGROUP_CREATE, args, "qgroup destroy", f"qgroup {show(qgroupid)}")


def assign(path: Path, member: int, parent: int, assign: bool = True) -> None:
    """Makes qgroup `member` a member of `parent` (assign=False: no longer one). Under full qgroups
    this can mark accounting inconsistent (then limits need a rescan to be exact again)."""
    operation = "qgroup assign" if assign else "qgroup remove"
    with opened(path) as fd:
        args = ioctl.QgroupAssignArgs(assign=int(assign), src=member, dst=parent)
        ioctl.call(fd, ioctl.IOC_QGROUP_ASSIGN, args, operation, f"{show(member)} in {show(parent)}")


def relations(path: Path) -> dict[int, set[int]]:
    """Every qgroup that is a member of others -> those others, from the quota tree's relation items.

    Each relation is stored twice, (member, RELATION, parent) and (parent, RELATION, member); the
    search starts at objectid 256, past the status, info and limit items (objectid 0), and a member
    is always of a lower level than its parent.
    """
    found: dict[int, set[int]] = {}
    try:
        with opened(path) as fd:
            for member, parent, _data in trees.items_of_type(
                fd, ioctl.QUOTA_TREE, ioctl.QGROUP_RELATION_KEY, str(path)
            ):
                if member >> LEVEL_SHIFT < parent >> LEVEL_SHIFT:
                    found.setdefault(member, set()).add(parent)
    except NotFound:  # quotas off: no quota tree
        return {}
    return found


def _collect(path: Path, first: int, last: int) -> dict[int, QgroupUsage]:
    """Usage and limit of qgroups first..last: one search of the info items, one of the limits."""
    with opened(path) as fd:
        limits = {
            qgroupid: max_rfer if flags & ioctl.QGROUP_LIMIT_MAX_RFER else None
            for qgroupid, _length, flags, max_rfer in trees.fixed_items(
                fd,
                ioctl.QUOTA_TREE,
                0,
                ioctl.QGROUP_LIMIT_KEY,
                (first, last),
                trees.QGROUP_LIMIT_ITEM_RFER,
                str(path),
            )
        }
        infos = trees.fixed_items(
            fd, ioctl.QUOTA_TREE, 0, ioctl.QGROUP_INFO_KEY, (first, last), _INFO_RFER_EXCL, str(path)
        )
        return {
            qgroupid: _usage((qgroupid, rfer, excl, limits.get(qgroupid)))
            for qgroupid, _length, rfer, excl in infos
        }


def usage(path: Path, subvolume_id: int) -> QgroupUsage:
    """Referenced and exclusive bytes and the limit of one qgroup (a subvolume id: its level-0 one)."""
    try:
        found = _collect(path, subvolume_id, subvolume_id)
    except NotFound:
        found = {}
    if subvolume_id not in found:
        raise NotFound(f"qgroup {show(subvolume_id)}: no qgroup (quotas off, or the subvolume is gone)")
    return found[subvolume_id]


def usage_all(path: Path, first: int = 0, last: int = LEVEL1 - 1) -> dict[int, QgroupUsage]:
    """Every level-0 qgroup's usage and limit (those of subvolume ids first..last) in one pass over the
    quota tree, by subvolume id."""
    try:
        return _collect(path, first, min(last, LEVEL1 - 1))
    except NotFound:
        return {}


def group_usage_all(path: Path) -> dict[int, QgroupUsage]:
    """Every qgroup of level 1 and above: usage and limit, by qgroupid."""
    try:
        return _collect(path, LEVEL1, ioctl.U64_MAX)
    except NotFound:
        return {}


def exclusive_all(path: Path) -> dict[int, int]:
    """Every qgroup's exclusive bytes, by qgroupid (a subvolume id at level 0): one search of the info
    items alone, no objects per qgroup (what the capacity check reads near a full pool: 30,000 qgroups
    at 10,000 volumes with a snapshot each)."""
    try:
        with opened(path) as fd:
            infos = trees.fixed_items(
                fd, ioctl.QUOTA_TREE, 0, ioctl.QGROUP_INFO_KEY, (0, ioctl.U64_MAX), _INFO_EXCL, str(path)
            )
            return {qgroupid: excl for qgroupid, _length, excl in infos}
    except NotFound:
        return {}
