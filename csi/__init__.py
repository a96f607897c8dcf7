"""csi: the CSI gRPC surface of btrfs-csi (Identity, Controller and Node services) over btrfs_core."""
