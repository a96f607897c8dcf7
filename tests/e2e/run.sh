#!/bin/sh
# The kind e2e suite, one command:   tests/e2e/run.sh [pytest args]
#
# Needs: a running Docker daemon, kind, root (the btrfs pools are loop devices made on the host),
# btrfs-progs on the host, network access to registry.k8s.io (sidecar images) and
# raw.githubusercontent.com (VolumeSnapshot CRDs and snapshot-controller manifests, pinned).
# Creates kind cluster "btrfs-csi-e2e" (1 control plane, 2 workers each with its own btrfs pool),
# builds and loads the driver image, installs the chart, runs tests/e2e, then deletes everything.
#   BTRFS_CSI_E2E_KEEP=1        keep the cluster afterwards (remove: python -m tests.e2e.cluster down)
#   BTRFS_CSI_E2E_NODE_IMAGE=   kindest/node image to use (default: kind's)
#   BTRFS_CSI_E2E_WORKDIR=      where pool images and the kubeconfig go (default /var/tmp/btrfs-csi-e2e)
set -eu
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
BTRFS_CSI_E2E=1 exec "$python" -m pytest -m e2e -p no:cacheprovider -v -ra tests/e2e "$@"
