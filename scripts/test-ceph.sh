#!/usr/bin/env bash
# `npm run test:ceph`: start a local Ceph cluster (scripts/ceph-local.sh) in a temporary directory, run the
# tests that need it (the store conformance suite on RadosBlockStore, and test/integration/ceph.test.ts:
# stores with --block-store rados, mounted), stop the cluster and remove its files, whatever happens.
# Needs `scripts/setup.sh --ceph`, the addon built (npm ci does it when librados-dev is installed; npm run
# build:rados by hand) and `npm run build` (the integration tests run the CLI).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[[ -f native/rados/build/Release/vdiskfs_rados.node ]] || { echo "test:ceph: the rados addon is not built: scripts/setup.sh --ceph, then npm run build:rados" >&2; exit 1; }
dir=$(mktemp -d /tmp/vdiskfs-ceph-XXXXXX)
cleanup() { bash scripts/ceph-local.sh stop "$dir" || true; rm -rf "$dir"; }
trap cleanup EXIT
conf=$(bash scripts/ceph-local.sh start "$dir" | tail -n 1)
[[ -f dist/cli/main.js ]] || npm run build
export VDISKFS_TEST_CEPH_CONF="$conf"
UV_THREADPOOL_SIZE=16 npx vitest run test/unit/storeConformance.test.ts -t Rados "$@"
npx vitest run test/integration/ceph.test.ts "$@"
