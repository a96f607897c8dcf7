"""Calls for a volume this node does not hold, and the one place where routing them to the node that
does will plug in (issue 13's peer channel: `NotHeld.modify` becomes a forward to the owner).

Volumes are node-local and every node serves the controller service for its own pool; the
external-resizer, though, runs once per cluster (it has no node-deployment mode) and sends each
ControllerModifyVolume to the socket of whichever node its pod landed on. A volume ID names no node,
so what tells "held by another node" from "exists nowhere" is the PersistentVolume name the resizer
adds with --extra-modify-metadata (`csi.storage.k8s.io/pv/name`): the provisioner creates every volume
under its PV's name, so the ID derived from that name is the request's ID exactly when the request is
for a volume of this driver.

Such a modify cannot be applied here until the nodes reach each other: it is answered UNAVAILABLE,
which the resizer takes as not final (the claim's modify stays InProgress) and retries with back-off.
Any other unknown volume is NOT_FOUND.
"""

from collections.abc import Mapping
from typing import NoReturn

from btrfs_core.errors import InvalidArgument, NotFound
from btrfs_core.ids import object_id
from btrfs_core.models import PV_NAME_KEY
from csi.errors import unavailable
from csi.validation import shown


class NotHeld:
    def __init__(self, node_id: str) -> None:
        self._node_id = node_id

    def modify(self, volume_id: str, mutable_parameters: Mapping[str, str]) -> NoReturn:
        """Answers a ControllerModifyVolume of a volume that is not in this node's pool (raises)."""
        pv_name = mutable_parameters.get(PV_NAME_KEY, "")
        if pv_name and _volume_id_of(pv_name) == volume_id:
            raise unavailable(
                f"volume {volume_id} (PersistentVolume {shown(pv_name)}) is not on node {self._node_id}, "
                "which cannot reach the node that holds it: retry later"
            )
        raise NotFound(f"volume {volume_id} does not exist")


def _volume_id_of(name: str) -> str | None:
    try:
        return object_id(name, "volume")
    except InvalidArgument:
        return None
