"""Identity service: who the plugin is, what it can do, and whether its pool is usable right now."""

import grpc
from google.protobuf import wrappers_pb2

from btrfs_core.errors import BtrfsCoreError
from btrfs_core.pool import Pool
from btrfs_core.version import driver_version
from csi.config import Config
from csi.errors import failed_precondition
from csi.pb import csi_pb2, csi_pb2_grpc

Service = csi_pb2.PluginCapability.Service
Expansion = csi_pb2.PluginCapability.VolumeExpansion


class IdentityServicer(csi_pb2_grpc.IdentityServicer):
    def __init__(self, config: Config, pool: Pool) -> None:
        self._config = config
        self._pool = pool
        self._version = driver_version()

    def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginInfoResponse:
        return csi_pb2.GetPluginInfoResponse(name=self._config.driver_name, vendor_version=self._version)

    def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: grpc.ServicerContext
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        # Expansion is ONLINE through NodeExpandVolume only: the resizer has no node-local mode, so the
        # controller capability stays off and the kubelet raises the limit on the owning node.
        return csi_pb2.GetPluginCapabilitiesResponse(
            capabilities=[
                csi_pb2.PluginCapability(service=Service(type=Service.CONTROLLER_SERVICE)),
                csi_pb2.PluginCapability(service=Service(type=Service.VOLUME_ACCESSIBILITY_CONSTRAINTS)),
                csi_pb2.PluginCapability(volume_expansion=Expansion(type=Expansion.ONLINE)),
            ]
        )

    def Probe(self, request: csi_pb2.ProbeRequest, context: grpc.ServicerContext) -> csi_pb2.ProbeResponse:
        # The server starts only after Pool.open checked the filesystem; this re-reads the quota status
        # (one tree search) so an unmounted or broken pool turns the liveness probe red.
        try:
            self._pool.stats.quota_status()
        except (BtrfsCoreError, OSError) as exc:
            raise failed_precondition(f"pool {self._pool.root} is not usable: {exc}") from None
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))
