#!/usr/bin/env bash
# Installs what is missing, builds (and the tessera binary against MPICH, for srun --mpi=pmi2), and
# runs every test (ctest: unit, multi-rank under mpirun with 1, 2 and 4 ranks, end-to-end, Python,
# style; GPU tests skip without a GPU), then the kernel tests, the scheduler and serving's unit
# tests (request parsing, guided decoding, tool calls) again under AddressSanitizer + UBSan in
# build-asan/, the watchdog's lock-free record, the scheduler, the server and the router under
# ThreadSanitizer in build-tsan/ (TESSERA_SKIP_ASAN=1 skips both
# sanitizer steps; the whole suite under ASan is `scripts/sanitize.sh address-all`, hours on 2
# cores: docs/reliability.md).
set -euo pipefail
source "$(dirname "$0")/env.sh"
t0=$(date +%s)
"$TESSERA_ROOT/scripts/setup.sh"
"$TESSERA_ROOT/scripts/test_venv.sh"
t1=$(date +%s)
"$TESSERA_ROOT/scripts/build.sh"
# The tessera binary against MPICH too, for srun --mpi=pmi2 (slurm_pmi2_test); TESSERA_SKIP_MPICH=1
# leaves it out (the test then skips).
mpich=""
if [ "${TESSERA_SKIP_MPICH:-0}" != 1 ]; then
  tm=$(date +%s)
  "$TESSERA_ROOT/scripts/build_mpich.sh"
  mpich=" (MPICH build $(( $(date +%s) - tm )) s)"
fi
t2=$(date +%s)
cd "$TESSERA_BUILD_DIR"
rc=0
ctest --output-on-failure -j "$(nproc)" --timeout 900 "$@" || rc=$?
t3=$(date +%s)
# sanitize NAME KIND TARGETS: a sanitizer build in $TESSERA_BUILD_DIR-NAME, its log beside the build.
sanitized=""
sanitize() {
  local name=$1 kind=$2 targets=$3 t0 result
  t0=$(date +%s)
  # shellcheck disable=SC2086
  if "$TESSERA_ROOT/scripts/sanitize.sh" "$kind" "$TESSERA_BUILD_DIR-$name" $targets \
      > "$TESSERA_BUILD_DIR/$name.log" 2>&1; then
    result="clean ($(grep -c '^\[  PASSED  \]' "$TESSERA_BUILD_DIR/$name.log") test executables)"
  else
    tail -n 60 "$TESSERA_BUILD_DIR/$name.log"
    result="FAILED (see $TESSERA_BUILD_DIR/$name.log)"
    rc=1
  fi
  sanitized="$sanitized, $name $(( $(date +%s) - t0 )) s: $result"
}
if [ "${TESSERA_SKIP_ASAN:-0}" != 1 ] && [ $# -eq 0 ]; then
  sanitize asan address \
    "kernels_cluster_core_test kernels_cluster_attention_test attention_test kernels_sparse_core_test
     scheduler_test serving_unit_test"
  sanitize tsan thread \
    "sharding_watchdog_test scheduler_test serving_unit_test serving_test serving_router_unit_test"
else
  sanitized=", sanitizers skipped"
fi
# Every fuzz target for 30 s, two at a time (clang build in build-fuzz/, ~3 min on 2 cores, then
# ~3 min of fuzzing; TESSERA_CI_FUZZ=0 skips it). ctest's fuzz_replay_test replays every corpus in
# any case.
if [ "${TESSERA_CI_FUZZ:-1}" = 1 ] && [ "${TESSERA_SKIP_ASAN:-0}" != 1 ] && [ $# -eq 0 ]; then
  tf=$(date +%s)
  if "$TESSERA_ROOT/scripts/fuzz.sh" --ci; then f=clean; else f=FAILED; rc=1; fi
  sanitized="$sanitized, fuzz $(( $(date +%s) - tf )) s: $f"
fi
echo "[test] setup + venv $((t1 - t0)) s, build $((t2 - t1)) s$mpich, tests $((t3 - t2)) s$sanitized"
exit $rc
