"""The driver's version, one string for GetPluginInfo, the start-up log line and btrfs_csi_build_info."""

import importlib.metadata

PACKAGE = "btrfs-csi"


def driver_version() -> str:
    """The installed package's version; a source tree that was never installed says so."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"
