#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (ctest: unit, multi-rank under mpirun with
# 1, 2 and 4 ranks, end-to-end, Python, style; GPU tests skip without a GPU), then the kernel tests
# again under AddressSanitizer + UBSan in build-asan/ and the watchdog's lock-free record under
# ThreadSanitizer in build-tsan/ (TESSERA_SKIP_ASAN=1 skips both sanitizer steps).
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
asan="skipped"
if [ "${TESSERA_SKIP_ASAN:-0}" != 1 ] && [ $# -eq 0 ]; then
  if TESSERA_ASAN_TARGETS="kernels_cluster_core_test kernels_cluster_attention_test attention_test" \
      "$TESSERA_ROOT/scripts/asan_kernels.sh" "$TESSERA_BUILD_DIR-asan" > "$TESSERA_BUILD_DIR/asan.log" 2>&1; then
    asan="clean ($(grep -c '^\[  PASSED  \]' "$TESSERA_BUILD_DIR/asan.log") test executables)"
  else
    tail -n 60 "$TESSERA_BUILD_DIR/asan.log"
    asan="FAILED (see $TESSERA_BUILD_DIR/asan.log)"
    rc=1
  fi
fi
t4=$(date +%s)
tsan="skipped"
if [ "${TESSERA_SKIP_ASAN:-0}" != 1 ] && [ $# -eq 0 ]; then
  if "$TESSERA_ROOT/scripts/tsan.sh" "$TESSERA_BUILD_DIR-tsan" > "$TESSERA_BUILD_DIR/tsan.log" 2>&1; then
    tsan="clean"
  else
    tail -n 60 "$TESSERA_BUILD_DIR/tsan.log"
    tsan="FAILED (see $TESSERA_BUILD_DIR/tsan.log)"
    rc=1
  fi
fi
t5=$(date +%s)
echo "[test] setup $((t1 - t0)) s, build $((t2 - t1)) s, tests $((t3 - t2)) s," \
  "asan kernels $((t4 - t3)) s: $asan, tsan watchdog $((t5 - t4)) s: $tsan"
exit $rc
