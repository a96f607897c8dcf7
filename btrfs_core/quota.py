"""Quotas and qgroups: mode, enable, rescan, limits, usage of one or all subvolumes, stale qgroups."""

import struct
from pathlib import Path

from btrfs_core import ioctl
from btrfs_core.errors import InUse, InvalidArgument, KernelError, NotFound
from btrfs_core.models import QgroupUsage, QuotaMode, QuotaStatus
from btrfs_core.subvolume import list_all, opened

_STATUS = struct.Struct("<QQQQ")  # version, generation, flags, rescan progress
_INFO = struct.Struct("<QQQQQ")  # generation, rfer, rfer_cmpr, excl, excl_cmpr
_EXCLUSIVE = struct.Struct("<24xQ")  # excl, behind generation, rfer and rfer_cmpr
_LIMIT = struct.Struct("<QQQQQ")  # flags, max_rfer, max_excl, rsv_rfer, rsv_excl
_LEVEL_SHIFT = 48  # a qgroupid is level << 48 | id; level 0 qgroups belong to one subvolume each


def status(path: Path) -> QuotaStatus:
    """The quota mode and flags, from the status item of the quota tree (absent when quotas are off)."""
    with opened(path) as fd:
        try:
            items = list(
                ioctl.tree_search(
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
    _version, _generation, flags, _rescan = _STATUS.unpack_from(items[0][3])
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


def disable(path: Path) -> None:
    with opened(path) as fd:
        args = ioctl.QuotaCtlArgs(cmd=ioctl.QUOTA_CTL_DISABLE)
        ioctl.call(fd, ioctl.IOC_QUOTA_CTL, args, "quota disable", str(path))


def rescan(path: Path) -> None:
    """Starts a rescan of full qgroup accounting (clears the inconsistent flag when it ends)."""
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_QUOTA_RESCAN, ioctl.QuotaRescanArgs(), "quota rescan", str(path))


def wait_rescan(path: Path) -> None:
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_QUOTA_RESCAN_WAIT, 0, "quota rescan wait", str(path))


def set_limit(path: Path, subvolume_id: int, limit: int | None) -> None:
    """Limits the referenced bytes of a subvolume's qgroup; None removes the limit."""
    if limit is not None and not 0 < limit < ioctl.U64_MAX:
        raise InvalidArgument(f"qgroup limit {limit} for subvolume {subvolume_id} is out of range")
    value = ioctl.U64_MAX if limit is None else limit  # the all-ones value clears the limit
    args = ioctl.QgroupLimitArgs(
        qgroupid=subvolume_id, lim=ioctl.QgroupLimit(flags=ioctl.QGROUP_LIMIT_MAX_RFER, max_rfer=value)
    )
    with opened(path) as fd:
        ioctl.call(fd, ioctl.IOC_QGROUP_LIMIT, args, "qgroup limit", f"subvolume {subvolume_id}")


def _collect(path: Path, first: int, last: int) -> dict[int, QgroupUsage]:
    """Usage and limit of level-0 qgroups first..last: one search of the info items, one of the limits."""
    info: dict[int, tuple[int, int]] = {}
    limits: dict[int, int | None] = {}
    with opened(path) as fd:
        for item_type in (ioctl.QGROUP_INFO_KEY, ioctl.QGROUP_LIMIT_KEY):
            items = ioctl.tree_search(
                fd, ioctl.QUOTA_TREE, (0, item_type, first), (0, item_type, last), str(path)
            )
            for _objectid, _type, qgroupid, data in items:
                if item_type == ioctl.QGROUP_INFO_KEY:
                    _gen, rfer, _rfer_cmpr, excl, _excl_cmpr = _INFO.unpack_from(data)
                    info[qgroupid] = (rfer, excl)
                else:
                    flags, max_rfer, *_ = _LIMIT.unpack_from(data)
                    limits[qgroupid] = max_rfer if flags & ioctl.QGROUP_LIMIT_MAX_RFER else None
    return {
        qgroupid: QgroupUsage(qgroupid, rfer, excl, limits.get(qgroupid))
        for qgroupid, (rfer, excl) in info.items()
    }


def usage(path: Path, subvolume_id: int) -> QgroupUsage:
    """Referenced and exclusive bytes and the limit of one subvolume."""
    try:
        found = _collect(path, subvolume_id, subvolume_id)
    except NotFound:
        found = {}
    if subvolume_id not in found:
        raise NotFound(f"qgroup 0/{subvolume_id}: no qgroup (quotas off, or the subvolume is gone)")
    return found[subvolume_id]


def usage_all(path: Path) -> dict[int, QgroupUsage]:
    """Every level-0 qgroup's usage and limit in one pass over the quota tree, by subvolume id."""
    try:
        return _collect(path, 0, (1 << _LEVEL_SHIFT) - 1)
    except NotFound:
        return {}


def exclusive_all(path: Path) -> dict[int, int]:
    """Every level-0 qgroup's exclusive bytes, by subvolume id: one search of the info items alone,
    no objects per qgroup (what the capacity check reads on every create: 20,000 qgroups at 10,000
    volumes with a snapshot each)."""
    try:
        with opened(path) as fd:
            items = ioctl.tree_search(
                fd,
                ioctl.QUOTA_TREE,
                (0, ioctl.QGROUP_INFO_KEY, 0),
                (0, ioctl.QGROUP_INFO_KEY, (1 << _LEVEL_SHIFT) - 1),
                str(path),
            )
            return {qgroupid: _EXCLUSIVE.unpack_from(data)[0] for _objectid, _type, qgroupid, data in items}
    except NotFound:
        return {}


def remove_stale(path: Path) -> list[int]:
    """Destroys level-0 qgroups whose subvolume no longer exists; returns their ids.

    A qgroup whose subvolume the cleaner has not dropped yet answers EBUSY; it is left for next time.
    """
    live = list_all(path)
    removed = []
    with opened(path) as fd:
        for qgroupid in usage_all(path):
            if qgroupid in live or qgroupid < ioctl.FIRST_FREE_OBJECTID:
                continue
            args = ioctl.QgroupCreateArgs(create=0, qgroupid=qgroupid)
            try:
                ioctl.call(fd, ioctl.IOC_QGROUP_CREATE, args, "qgroup destroy", f"qgroup 0/{qgroupid}")
            except (InUse, NotFound, KernelError):
                continue  # EBUSY: the cleaner has not dropped the subvolume yet; try again later
            removed.append(qgroupid)
    return removed
