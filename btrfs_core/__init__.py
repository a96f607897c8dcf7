"""btrfs_core: btrfs subvolumes, snapshots and qgroups through the kernel ioctls."""
