#!/bin/sh
# The e2e suite, one command (`make e2e`):   tests/e2e/run.sh [pytest args]
#
# Picks the cluster provider (tests/e2e/providers.py): kind where Docker and kind exist (see
# kind_cluster.py), else a local single-node Kubernetes built from source on this machine (see
# local_cluster.py; needs root, a Go toolchain and Debian's packages; tools/e2e/prepare builds
# it, cached in /var/cache/btrfs-csi-e2e). Brings the cluster up, runs tests/e2e, and tears it
# down, also when something fails.
#   BTRFS_CSI_E2E_KEEP=1   keep the cluster afterwards (local: `make e2e-down` removes it)
set -eu
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
start=$(date +%s)
provider=$("$python" -m tests.e2e.providers 2>/dev/null)
echo "[e2e] cluster provider: $provider"
if [ "$provider" = local ]; then
    PYTHON="$python" tools/e2e/prepare
    if [ "${BTRFS_CSI_E2E_KEEP:-}" != 1 ]; then
        # Belt and braces: the suite tears down itself; this also covers a killed pytest.
        trap '"$python" -m tests.e2e.local_cluster down >/dev/null 2>&1 || true' EXIT
    fi
fi
t=$(date +%s)
rc=0
BTRFS_CSI_E2E=1 "$python" -m pytest -m e2e -p no:cacheprovider -v -ra tests/e2e "$@" || rc=$?
echo "[e2e] phase suite (cluster up, scenarios, down): $(( $(date +%s) - t ))s"
echo "[e2e] total: $(( $(date +%s) - start ))s"
exit $rc
