#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (ctest: unit, multi-rank under mpirun with
# 1, 2 and 4 ranks, end-to-end, Python reference, style). GPU tests skip without a GPU.
set -euo pipefail
source "$(dirname "$0")/env.sh"
t0=$(date +%s)
"$TESSERA_ROOT/scripts/setup.sh"
t1=$(date +%s)
"$TESSERA_ROOT/scripts/build.sh"
t2=$(date +%s)
cd "$TESSERA_BUILD_DIR"
rc=0
ctest --output-on-failure -j "$(nproc)" --timeout 900 "$@" || rc=$?
t3=$(date +%s)
echo "[test] setup $((t1 - t0)) s, build $((t2 - t1)) s, tests $((t3 - t2)) s"
exit $rc
