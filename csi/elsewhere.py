"""Calls for a volume this node does not hold: forwarded over the peer channel to the node that holds
it, when there are peers and one of them does.

Volumes are node-local and every node serves the controller service for its own pool; the
external-resizer, though, runs once per cluster (it has no node-deployment mode) and sends each
ControllerModifyVolume to the socket of whichever node its pod landed on. A volume ID names no node,
so what tells "held by another node" from "exists nowhere" is the PersistentVolume name the resizer
adds with --extra-modify-metadata (`csi.storage.k8s.io/pv/name`): the provisioner creates every volume
under its PV's name, so the ID derived from that name is the request's ID exactly when the request is
for a volume of this driver.

A modify no peer can apply here (no peers configured, or none answers that it holds the volume) is
answered UNAVAILABLE, which the resizer takes as not final (the claim's modify stays InProgress) and
retries with back-off. Any other unknown volume is NOT_FOUND.
"""

from collections.abc import Mapping

from btrfs_core.errors import InvalidArgument, NotFound
from btrfs_core.ids import object_id
from btrfs_core.models import PV_NAME_KEY, Source, SourceKind
from csi.errors import unavailable
from csi.peer.client import PeerClient
from csi.validation import shown


class NotHeld:
    def __init__(self, node_id: str, peers: PeerClient | None = None) -> None:
        self._node_id = node_id
        self._peers = peers

    def modify(self, volume_id: str, mutable_parameters: Mapping[str, str]) -> None:
        """A ControllerModifyVolume of a volume that is not in this node's pool: applied by the peer that
        holds it (returns once applied there), else refused."""
        holder = self._peers.locate(Source(SourceKind.VOLUME, volume_id)) if self._peers else None
        if holder is not None and self._peers is not None:
            self._peers.modify(holder[0], volume_id, mutable_parameters)
            return
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
